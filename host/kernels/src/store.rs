//! Where a matrix's bytes live: in its own allocation, or inside a
//! read-only weight image (a memory-mapped file, see [`crate::image`])
//! that every process running the same model shares through the page
//! cache.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A read-only byte image that matrices may borrow from: in practice a
/// memory-mapped weight image. The bytes must not change while any
/// matrix borrows them (images are written once, under another name, and
/// renamed into place, so a mapped one is never rewritten).
pub type Image = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Element types a buffer may view an image's bytes as: every bit
/// pattern is a value, so any aligned bytes are a valid slice of them.
pub(crate) trait Plain: Copy + 'static {}
impl Plain for u8 {}
impl Plain for i8 {}
impl Plain for f32 {}

/// A read-only slice of `T`, owned or borrowed from an [`Image`].
pub(crate) enum Buf<T> {
    Owned(Vec<T>),
    Mapped {
        /// Keeps the bytes alive.
        _image: Image,
        ptr: *const T,
        len: usize,
    },
}

// SAFETY: a mapped buffer is a read-only view of bytes its `Image` (itself
// `Send + Sync`) keeps alive and unchanged; sharing or moving it across
// threads is sharing `&[T]` for `T: Send + Sync`.
unsafe impl<T: Send + Sync> Send for Buf<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Buf<T> {}

impl<T: Plain> Buf<T> {
    /// `len` elements of `image` starting at byte `start`, checked to lie
    /// inside it and to be aligned for `T`.
    pub(crate) fn mapped(image: &Image, start: usize, len: usize) -> Result<Buf<T>, String> {
        let bytes: &[u8] = (**image).as_ref();
        let size = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or("a buffer length overflows")?;
        let end = start.checked_add(size).ok_or("a buffer end overflows")?;
        if end > bytes.len() {
            return Err(format!(
                "a buffer at bytes {start}..{end} lies past the image's end ({} bytes)",
                bytes.len()
            ));
        }
        let ptr = bytes[start..].as_ptr();
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(format!("a buffer at byte {start} is not aligned"));
        }
        Ok(Buf::Mapped {
            _image: Arc::clone(image),
            ptr: ptr.cast(),
            len,
        })
    }

    /// The elements' bytes (for writing an image).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let s: &[T] = self;
        // SAFETY: `T` is plain data without padding (u8, i8, f32); its
        // bytes are initialised.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }
    }
}

impl<T: Plain> Deref for Buf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            // SAFETY: `mapped` checked the range and alignment, the image
            // outlives `self`, and every bit pattern is a `T`.
            Buf::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Buf<T> {
        Buf::Owned(v)
    }
}

impl<T> Default for Buf<T> {
    fn default() -> Buf<T> {
        Buf::Owned(Vec::new())
    }
}

impl<T: Clone> Clone for Buf<T> {
    fn clone(&self) -> Buf<T> {
        match self {
            Buf::Owned(v) => Buf::Owned(v.clone()),
            Buf::Mapped { _image, ptr, len } => Buf::Mapped {
                _image: Arc::clone(_image),
                ptr: *ptr,
                len: *len,
            },
        }
    }
}

impl<T> fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Buf::Owned(v) => write!(f, "Owned({} elements)", v.len()),
            Buf::Mapped { len, .. } => write!(f, "Mapped({len} elements)"),
        }
    }
}

/// The panel records of a `rows × cols` matrix of `unit`-column blocks,
/// `record` elements per panel and block, found at `span` (start, length
/// in bytes) of `image`: the length must be exactly what the shape takes.
pub(crate) fn records<T: Plain>(
    image: &Image,
    (rows, cols): (usize, usize),
    unit: usize,
    record: usize,
    (start, len): (usize, usize),
    format: &str,
) -> Result<Buf<T>, String> {
    if rows == 0 || cols == 0 || !cols.is_multiple_of(unit) {
        return Err(format!(
            "a {format} matrix of {rows}×{cols} (columns must be a positive multiple of {unit})"
        ));
    }
    let want = rows
        .div_ceil(crate::PANEL)
        .checked_mul(cols / unit)
        .and_then(|n| n.checked_mul(record * std::mem::size_of::<T>()))
        .ok_or_else(|| format!("a {format} matrix of {rows}×{cols} overflows"))?;
    if len != want {
        return Err(format!(
            "a {format} matrix of {rows}×{cols} takes {want} bytes, the image gives {len}"
        ));
    }
    Buf::mapped(image, start, len / std::mem::size_of::<T>())
}
