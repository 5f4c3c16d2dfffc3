//! Every message the worker and the object exchange is written by the wasm's writer
//! exactly as serde_json writes it, and read back unchanged by the strict reader both
//! sides use (`core::json_serde`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::api::{self, GcCandidate, GcPhase, GcPlan, GcRule, GcRun, Pin, Pins};
use crate::core::gc::{Retention, PINNED};
use crate::core::index::*;
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathBaseName;

const NARINFO: &str = "StorePath: /nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top\nURL: nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar.zst\nCompression: zstd\nFileHash: sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc\nFileSize: 7\nNarHash: sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc\nNarSize: 9\nReferences: 9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-leaf anfizv71z26rnrvkpdwsc1f5wwyd9kw6-middle\nDeriver: h15vw3d8vjq21wraq1p08xcw6jby7s0c-top.drv\n";

fn entry() -> Entry {
    Entry::of(
        &NarInfo::parse(NARINFO.as_bytes(), "/nix/store").unwrap(),
        5,
        None,
    )
}

fn check<T: Serialize + DeserializeOwned + PartialEq + core::fmt::Debug>(value: &T) {
    let ours = api::render(value);
    assert_eq!(ours, serde_json::to_string(value).unwrap());
    assert_eq!(
        &crate::core::json_serde::from_str::<T>(&ours).unwrap(),
        value
    );
}

#[test]
fn an_entry_leaves_out_the_self_reference_and_sorts() {
    let entry = entry();
    let refs: Vec<String> = entry.references.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        refs,
        [
            "anfizv71z26rnrvkpdwsc1f5wwyd9kw6",
            "pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys"
        ]
    );
    assert_eq!(entry.name, "top");
    assert_eq!((entry.file_size, entry.nar_size), (7, 9));
    assert!(entry.nar.starts_with("nar/0n9m"));
    assert!(!entry.signed);
}

#[test]
fn messages_round_trip_through_both_writers() {
    let entry = entry();
    let hash = entry.hash;
    check(&Begin {
        entry: entry.clone(),
        upstreams: vec!["https://cache.nixos.org".into()],
        adopt: vec![entry.clone()],
        upstream_hits: vec![UpstreamHit {
            hash,
            cache: "https://cache.nixos.org".into(),
        }],
        now: 1,
    });
    check(&Begun::Reserved { reservation: 3 });
    check(&Begun::Missing {
        missing: vec![hash],
    });
    check(&Begun::Deleting {
        deleting: api::True,
    });
    check(&Finish {
        reservation: 3,
        now: 4,
        unchanged: true,
    });
    check(&Forget {
        hash,
        now: 1,
        purged: true,
        nar: None,
    });
    check(&Forgot::Forgotten {
        forgotten: api::True,
    });
    check(&Forgot::Referenced {
        referrers: vec![hash],
    });
    check(&Forgot::Publishing {
        publishing: api::True,
    });
    check(&Forgot::Pinned {
        pins: vec!["release".parse().unwrap()],
    });
    check(&Query {
        hashes: vec![hash],
        upstreams: vec![],
        now: 5,
    });
    check(&ReconcilePage {
        after: String::new(),
        through: None,
        listed_at: 1,
        narinfos: vec![hash],
        uploaded: vec![2],
    });
    check(&PageChecked {
        unindexed: vec![hash],
        removed: 1,
    });
    check(&Advance {
        after: "a".into(),
        through: Some("b".into()),
        adopt: vec![entry.clone()],
        unreadable: vec![Unreadable {
            hash,
            nar: Some("nar/x".into()),
        }],
        listed_at: 1,
        now: 2,
    });
    check(&Cursor {
        after: "a".into(),
        moved: true,
    });
    check(&Refresh {
        hashes: vec![hash],
        now: 1,
    });
    let base: StorePathBaseName = "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top".parse().unwrap();
    check(&SetPin {
        name: "release".parse().unwrap(),
        store_path: base.clone(),
        expires_at: Some(3),
        subject: "ci".into(),
        now: 1,
    });
    let pin = Pin {
        name: "release".parse().unwrap(),
        store_path: base.clone(),
        pinned_at: 1,
        expires_at: None,
        subject: Some("ci".into()),
    };
    check(&PinSet::Pinned { pin: pin.clone() });
    check(&PinSet::NotCached { absent: api::True });
    check(&Pins { pins: vec![pin] });
    check(&RemovePin {
        name: "release".parse().unwrap(),
    });
    check(&PinRemoved { removed: true });
    for dry_run in [true, false] {
        check(&GcStep {
            dry_run,
            start_up_to: 7,
            retention: Retention {
                retain_ms: Some(1),
                budget_bytes: None,
                grace_ms: 3,
            },
            now: 4,
        });
    }
    let run = GcRun {
        run: 1,
        phase: GcPhase::Orphans,
        started_at: 2,
        finished_at: None,
        roots_since: Some(1),
        budget_bytes: Some(PINNED),
        grace_ms: 3,
        kept_paths: 4,
        kept_bytes: 5,
        over_budget: true,
        doomed_paths: 6,
        removed_paths: 7,
        removed_bytes: 8,
        spared_paths: 9,
        held_paths: 0,
        removed_objects: 10,
        listed_keys: 11,
        waiting_for_lap: true,
    };
    check(&GcWork {
        run: run.clone(),
        sweep: vec![hash],
        list_after: Some("k".into()),
        plan: Some(GcPlan {
            paths: vec![GcCandidate {
                store_path: base,
                rule: GcRule::Budget,
                file_size: 1,
                pushed_at: 2,
            }],
            path_count: 1,
            path_bytes: 1,
            in_grace: 0,
            pending_paths: 2,
        }),
        reconcile: true,
    });
    check(&Swept {
        hashes: vec![hash],
        now: 1,
        purged: false,
    });
    check(&OrphanPage {
        after: String::new(),
        through: None,
        objects: vec![Listed {
            key: "k".into(),
            uploaded: 1,
            points_to: Some("nar/x".into()),
        }],
        now: 2,
    });
    check(&Orphans {
        delete: vec!["nar/x".into()],
        run: run.clone(),
    });
    check(&OwnLog {
        drv: "x.drv".into(),
    });
    check(&At { now: 1 });
    check(&Ticked {
        reconcile_steps: 1,
        gc: Some(run),
        more: false,
    });
    check(&true);
    check(&api::True);
}

#[test]
fn operation_names_are_distinct() {
    let mut names = ops::NAMES.to_vec();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count);
}

#[test]
fn only_narinfo_keys_name_paths() {
    assert!(narinfo_key_hash("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.narinfo").is_some());
    assert!(narinfo_key_hash("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.ls").is_none());
    assert!(narinfo_key_hash("nix-cache-info").is_none());
    assert!(narinfo_key_hash("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo").is_none());
}

#[test]
fn missing_references_are_named_by_their_store_paths() {
    let info = NarInfo::parse(NARINFO.as_bytes(), "/nix/store").unwrap();
    let missing: Vec<_> = info.references.iter().map(|r| *r.hash()).collect();
    assert_eq!(
        describe_missing(&missing[1..], &info),
        "pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-leaf, anfizv71z26rnrvkpdwsc1f5wwyd9kw6-middle"
    );
    assert!(describe_missing(&vec![missing[1]; 12], &info).ends_with(" and 2 more"));
}

#[test]
fn nix_reads_a_narinfo_it_cannot_parse_for_its_last_url() {
    let text = b"garbage\nURL: nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar\nURL:xnar/1.nar\n";
    // Nix splits at the first ':' and skips one character: the last URL line wins.
    assert_eq!(lenient_nar_key(text), None);
    let text = b"?\nURL:xnar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar\n";
    assert_eq!(
        lenient_nar_key(text).as_deref(),
        Some("nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar")
    );
}
