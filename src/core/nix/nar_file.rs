//! The compressed NAR files of a binary cache: `nar/<FileHash>.nar<ext>`.
//!
//! NixOS/nix `src/libstore/binary-cache-store.cc` names each NAR file by the nix32
//! SHA-256 of its (compressed) bytes, its `FileHash`, plus an extension that follows the
//! narinfo's `Compression:` field. The name is a content address: a NAR upload can be
//! verified against its own name.

use core::fmt;

use super::hash::Sha256;
use super::nix32;

/// How a NAR file is compressed: a narinfo's `Compression:` and the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Bzip2,
    Zstd,
    Brotli,
    Lz4,
    Lzip,
}

impl Compression {
    /// What follows `.nar` in the file name.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Bzip2 => ".bz2",
            Compression::Zstd => ".zst",
            Compression::Brotli => ".br",
            Compression::Lz4 => ".lz4",
            Compression::Lzip => ".lzip",
        }
    }

    /// The value of a narinfo's `Compression:` field.
    pub fn narinfo_name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
            Compression::Brotli => "br",
            Compression::Lz4 => "lz4",
            Compression::Lzip => "lzip",
        }
    }

    fn from_extension(extension: &str) -> Option<Self> {
        Some(match extension {
            "" => Compression::None,
            ".xz" => Compression::Xz,
            ".bz2" => Compression::Bzip2,
            ".zst" => Compression::Zstd,
            ".br" => Compression::Brotli,
            ".lz4" => Compression::Lz4,
            ".lzip" => Compression::Lzip,
            _ => return None,
        })
    }

    /// `None` for a method Nix may write but this cache cannot name a file for (Nix
    /// gives `gzip` and other libarchive filters no extension at all).
    pub fn from_narinfo_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Compression::None,
            "xz" => Compression::Xz,
            "bzip2" => Compression::Bzip2,
            "zstd" => Compression::Zstd,
            "br" => Compression::Brotli,
            "lz4" => Compression::Lz4,
            "lzip" => Compression::Lzip,
            _ => return None,
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.narinfo_name())
    }
}

/// A NAR file's name, `<nix32 FileHash>.nar<ext>` (the part after `nar/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarFile {
    pub file_hash: Sha256,
    pub compression: Compression,
}

impl NarFile {
    /// The directory NAR files live in, in the cache and in storage.
    pub const DIR: &'static str = "nar/";

    /// Parses a file name (no directory). Strict: one spelling per file.
    pub fn parse(file_name: &str) -> Option<Self> {
        let (hash, extension) = file_name.split_once(".nar")?;
        Some(Self {
            file_hash: Sha256(nix32::decode(hash).ok()?),
            compression: Compression::from_extension(extension)?,
        })
    }

    /// Parses a narinfo `URL:` that names a NAR of this cache, `nar/<file>`.
    pub fn parse_url(url: &str) -> Option<Self> {
        Self::parse(url.strip_prefix(Self::DIR)?)
    }

    /// The narinfo `URL:` of this file.
    pub fn url(&self) -> String {
        format!("{}{self}", Self::DIR)
    }
}

impl fmt::Display for NarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.nar{}",
            self.file_hash.nix32(),
            self.compression.extension()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const ALL: [Compression; 7] = [
        Compression::None,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Zstd,
        Compression::Brotli,
        Compression::Lz4,
        Compression::Lzip,
    ];

    #[test]
    fn names_round_trip_for_every_compression() {
        for compression in ALL {
            let name = format!("{HASH}.nar{}", compression.extension());
            let file = NarFile::parse(&name).unwrap();
            assert_eq!(file.compression, compression);
            assert_eq!(file.to_string(), name);
            assert_eq!(NarFile::parse_url(&file.url()), Some(file));
            assert_eq!(
                Compression::from_narinfo_name(compression.narinfo_name()),
                Some(compression)
            );
            assert_eq!(
                Compression::from_extension(compression.extension()),
                Some(compression)
            );
        }
    }

    #[test]
    fn rejects_other_names() {
        for bad in [
            format!("{HASH}.nar.gz"),
            format!("{HASH}.nar.xz.xz"),
            format!("{HASH}.NAR"),
            HASH.to_owned(),
            format!("{}.nar", &HASH[1..]),
            "7rjj86a15146cq1d3qy068lml7n8ykzm.nar".to_owned(),
        ] {
            assert_eq!(NarFile::parse(&bad), None, "{bad}");
        }
        assert_eq!(NarFile::parse_url(&format!("{HASH}.nar")), None);
        assert_eq!(NarFile::parse_url(&format!("../nar/{HASH}.nar")), None);
        assert_eq!(Compression::from_narinfo_name("gzip"), None);
    }
}
