"""`/_nixflare/metrics` against the real worker: Prometheus text, parsed by the
Prometheus project's own parser (prometheus_client), its numbers checked against what
was pushed; and the Grafana dashboard in docs/ charts only metrics the worker emits."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import (CLI, REPO, Keys, Nix, Tokens, bearer, build_closure, cron, field, request, run,
                      running_worker)

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"


def scrape(worker, token: str) -> dict[str, list]:
    status, headers, body = request(worker, "GET", "/_nixflare/metrics", bearer(token))
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert headers["cache-control"] == "no-store"
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(families: dict, name: str, **labels) -> float:
    family = name.removesuffix("_total")
    samples = [s for s in families[family] if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(samples) == 1, (name, labels, families.get(family))
    return samples[0].value


def test_metrics_count_what_was_pushed_and_need_a_metrics_token(nix: Nix, keys: Keys, tokens: Tokens, tmp_path):
    persist = tmp_path / "r2"
    persist.mkdir()
    closure = build_closure(nix, salt="-metrics")
    variables = {"PUBLIC_KEYS": keys.public, "TOKEN_PUBLIC_KEYS": tokens.public, "RETAIN_DAYS": "30"}
    with running_worker(persist, variables, extra_args=("--test-scheduled",)) as worker:
        scraper = tokens.mint("metrics")
        assert request(worker, "GET", "/_nixflare/metrics")[0] == 401
        assert request(worker, "GET", "/_nixflare/metrics", bearer(tokens.mint("read,write")))[0] == 403
        assert request(worker, "PUT", "/_nixflare/metrics", bearer(scraper), b"")[0] == 405
        before = scrape(worker, scraper)
        assert value(before, "nixflare_paths") == 0

        pusher = tokens.mint("read,write")
        run([str(CLI), "push", "--cache", worker.url, "--key", str(keys.secret_file), "--spool-dir",
             str(tmp_path / "spool"), closure.top], env=dict(nix.env, NIXFLARE_TOKEN=pusher))
        after = scrape(worker, scraper)
        assert value(after, "nixflare_paths") == len(closure.paths)
        narinfos = [request(worker, "GET", f"/{Path(p).name[:32]}.narinfo")[2].decode() for p in closure.paths]
        assert value(after, "nixflare_stored_bytes") == sum(int(field(n, "FileSize")) for n in narinfos)
        assert value(after, "nixflare_nar_bytes") == sum(int(field(n, "NarSize")) for n in narinfos)
        assert value(after, "nixflare_retain_days") == 30
        assert value(after, "nixflare_reservations") == 0
        assert value(after, "nixflare_index_operations_total", op="finish/batch", outcome="ok") >= 1
        assert value(after, "nixflare_index_operations_total", op="query", outcome="ok") >= 1

        # A cron tick: a reconcile lap and a GC pass, both reported.
        cron(worker, 0, tokens.mint("read,delete"))
        ticked = scrape(worker, scraper)
        assert value(ticked, "nixflare_gc_phase", phase="done") == 1
        assert value(ticked, "nixflare_gc_kept_paths") == len(closure.paths)
        assert value(ticked, "nixflare_gc_removed_paths") == 0
        assert value(ticked, "nixflare_gc_pass_finished_timestamp_seconds") > 1.7e9
        assert value(ticked, "nixflare_reconcile_last_lap_timestamp_seconds") > 1.7e9

        # Every metric the dashboard charts is one the worker emits (budget aside: unset here).
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        charted = {m for e in exprs for m in re.findall(r"\bnixflare_[a-z_]+", e)}
        emitted = {s.name for samples in ticked.values() for s in samples}
        assert charted and charted - emitted <= {"nixflare_budget_bytes"}, charted - emitted
