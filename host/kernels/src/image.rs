//! Weight images: a model's matrices written once in the kernels' own
//! layout (panels of sixteen rows), so that later starts map the file
//! instead of reading and regrouping the model's tensors. A mapped image
//! costs no load time beyond page faults, its pages are the page cache's
//! (two processes running one model share them), and resident memory is
//! what the matrices take, nothing more.
//!
//! The file: a 64-byte header (magic, format version, the caller's 32-byte
//! key, where the index is), the buffers, each at a 64-byte boundary, and
//! an index of little-endian 64-bit words describing the model and where
//! each buffer lies. Reading checks everything the index says against the
//! file (bounds, alignment, each matrix's byte count for its shape), so a
//! truncated or foreign file is an error, never a bad read.

use std::io::{self, Seek, SeekFrom, Write};

use crate::store::Image;

/// The first eight bytes of every image.
const MAGIC: &[u8; 8] = b"HEARTHWI";

/// Bumped whenever the layout of the index or of any format's panels
/// changes: an image of another version is rebuilt, not read.
pub const VERSION: u32 = 1;

/// Bytes before the first buffer.
const HEADER: u64 = 64;

/// Buffers start at multiples of this (a cache line; any element type's
/// alignment).
const ALIGN: u64 = 64;

/// The most words an index may hold: far more than any model needs, few
/// enough that a corrupt length cannot ask for gigabytes.
const MAX_WORDS: u64 = 1 << 24;

/// Writes an image: buffers as they come, the index at the end, the header
/// last.
pub(crate) struct Writer<W: Write + Seek> {
    out: W,
    pos: u64,
    words: Vec<u64>,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts an image in `out` (at its start).
    pub(crate) fn new(mut out: W) -> io::Result<Writer<W>> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0; HEADER as usize])?;
        Ok(Writer {
            out,
            pos: HEADER,
            words: Vec::new(),
        })
    }

    /// Adds an index word.
    pub(crate) fn word(&mut self, w: u64) {
        self.words.push(w);
    }

    /// Writes a buffer and adds its (start, length) to the index.
    pub(crate) fn blob(&mut self, bytes: &[u8]) -> io::Result<()> {
        let pad = self.pos.next_multiple_of(ALIGN) - self.pos;
        self.out.write_all(&[0; ALIGN as usize][..pad as usize])?;
        self.pos += pad;
        self.words.push(self.pos);
        self.words.push(bytes.len() as u64);
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index and the header; returns the output, flushed.
    pub(crate) fn finish(mut self, key: &[u8; 32]) -> io::Result<W> {
        let index = self.pos;
        for w in &self.words {
            self.out.write_all(&w.to_le_bytes())?;
        }
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[16..48].copy_from_slice(key);
        header[48..56].copy_from_slice(&index.to_le_bytes());
        header[56..64].copy_from_slice(&(self.words.len() as u64).to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads an image's index, word by word.
pub(crate) struct Reader<'a> {
    image: &'a Image,
    words: Vec<u64>,
    at: usize,
}

impl<'a> Reader<'a> {
    /// Checks the header against `key` and reads the index.
    pub(crate) fn open(image: &'a Image, key: &[u8; 32]) -> Result<Reader<'a>, String> {
        let bytes: &[u8] = (**image).as_ref();
        if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
            return Err("not a hearth weight image".into());
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!(
                "a weight image of format {version}; this build reads format {VERSION}"
            ));
        }
        if &bytes[16..48] != key {
            return Err("the weight image was made from another model file".into());
        }
        let (start, count) = (word(48), word(56));
        let end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| count <= MAX_WORDS && end <= bytes.len() as u64)
            .ok_or_else(|| {
                format!(
                    "the weight image's index ({count} words at byte {start}) lies past its end ({} bytes): truncated?",
                    bytes.len()
                )
            })?;
        let words = bytes[start as usize..end as usize]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        Ok(Reader {
            image,
            words,
            at: 0,
        })
    }

    /// The image the buffers lie in.
    pub(crate) fn image(&self) -> &'a Image {
        self.image
    }

    /// The next word.
    pub(crate) fn word(&mut self) -> Result<u64, String> {
        let w = *self
            .words
            .get(self.at)
            .ok_or("the weight image's index ends early")?;
        self.at += 1;
        Ok(w)
    }

    /// The next word as a size.
    pub(crate) fn size(&mut self) -> Result<usize, String> {
        let w = self.word()?;
        usize::try_from(w).map_err(|_| format!("a size of {w} in the weight image's index"))
    }

    /// The next buffer's (start, length) in bytes.
    pub(crate) fn span(&mut self) -> Result<(usize, usize), String> {
        Ok((self.size()?, self.size()?))
    }

    /// The next buffer, copied out as f32 values (norm weights: small).
    pub(crate) fn floats(&mut self) -> Result<Vec<f32>, String> {
        let (start, len) = self.span()?;
        let bytes: &[u8] = (**self.image).as_ref();
        let b = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .filter(|b| b.len().is_multiple_of(4))
            .ok_or("a vector in the weight image lies past its end")?;
        Ok(b.chunks_exact(4)
            .map(|v| f32::from_le_bytes(v.try_into().expect("4 bytes")))
            .collect())
    }

    /// Checks the whole index was read.
    pub(crate) fn finish(self) -> Result<(), String> {
        if self.at == self.words.len() {
            Ok(())
        } else {
            Err("the weight image's index has words left over".into())
        }
    }
}

/// An f32 vector's bytes, little-endian (for [`Writer::blob`]).
pub(crate) fn float_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}
