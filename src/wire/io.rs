//! Async adapters: frames over any tokio [`AsyncRead`] / [`AsyncWrite`].
//!
//! Owns only the buffering loop around the pure codec in [`super::codec`];
//! it knows nothing of QUIC, certificates or connections, so the QUIC
//! transport uses it on quinn streams and tests use it on in-memory pipes.

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{CodecConfig, DecodeError, EncodeError, FrameDecoder, encode, encoded_len};
use super::frame::Frame;

/// The smallest read [`read_frame`] asks the reader for, so small frames
/// arriving together are read in one call.
pub const MIN_READ: usize = 8 * 1024;

/// Why [`read_frame`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The reader failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not a valid frame, or the stream ended inside a frame
    /// ([`DecodeError::Truncated`]).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl ReadError {
    /// The code to close the stream with, for decode errors; `None` for I/O
    /// errors (the stream is already unusable).
    pub fn close_code(&self) -> Option<u32> {
        match self {
            ReadError::Io(_) => None,
            ReadError::Decode(e) => Some(e.close_code()),
        }
    }
}

/// Why [`write_frame`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The frame was refused by the encoder; nothing was written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The writer failed; part of the frame may have been written.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next frame from `reader`.
///
/// `buf` and `decoder` carry the stream's state between calls: keep them
/// for the stream's lifetime. Bytes read beyond the returned frame stay in
/// `buf` for the next call. Returns `Ok(None)` at a clean end of stream (no
/// partial frame buffered) and [`DecodeError::Truncated`] when the stream
/// ends inside a frame. Memory reserved for a frame is bounded by its
/// header-checked length, so never more than `4 + max_frame_len` (or
/// [`MIN_READ`]) at a time.
///
/// Cancel safety: cancelling loses nothing; bytes already read are in
/// `buf` and the next call continues from them.
pub async fn read_frame<R>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(Some(frame));
        }
        let want = decoder.bytes_needed(buf).max(MIN_READ);
        buf.reserve(want);
        if reader.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let got = buf.len();
            return Err(DecodeError::Truncated {
                needed: got + decoder.bytes_needed(buf),
                got,
            }
            .into());
        }
    }
}

/// Encodes `frame` and writes it to `writer` with one `write_all`.
///
/// Allocates one exactly sized buffer per call; see [`write_frame_buf`] to
/// reuse one. Does not flush: flush buffered writers yourself (quinn send
/// streams need no flush).
pub async fn write_frame<W>(
    writer: &mut W,
    frame: &Frame,
    cfg: &CodecConfig,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = BytesMut::with_capacity(encoded_len(frame));
    write_frame_buf(writer, frame, &mut buf, cfg).await
}

/// Like [`write_frame`], encoding into `buf` (cleared first) so a caller
/// writing many frames reuses one allocation.
pub async fn write_frame_buf<W>(
    writer: &mut W,
    frame: &Frame,
    buf: &mut BytesMut,
    cfg: &CodecConfig,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    buf.clear();
    encode(frame, buf, cfg)?;
    writer.write_all(buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Data, Probe};
    use bytes::Bytes;

    fn data(n: usize) -> Frame {
        Frame::Data(Data {
            stream: "s".into(),
            incarnation: 1,
            seq: n as u64,
            message_id: n as u64,
            class: 3,
            delivery: 1,
            payload: Bytes::from(vec![n as u8; n]),
        })
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let cfg = CodecConfig::default();
        let frames: Vec<Frame> = [0, 1, 100, 5000, 70_000].into_iter().map(data).collect();
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            for f in &sent {
                write_frame_buf(&mut a, f, &mut buf, &cfg).await.unwrap();
            }
            write_frame(
                &mut a,
                &Frame::Probe(Probe {
                    nonce: 1,
                    sent_at_us: 2,
                }),
                &cfg,
            )
            .await
            .unwrap();
        });
        let mut buf = BytesMut::new();
        let mut dec = FrameDecoder::new(cfg);
        for f in &frames {
            assert_eq!(
                read_frame(&mut b, &mut buf, &mut dec)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(f)
            );
        }
        assert!(matches!(
            read_frame(&mut b, &mut buf, &mut dec).await.unwrap(),
            Some(Frame::Probe(_))
        ));
        writer.await.unwrap();
        assert!(
            read_frame(&mut b, &mut buf, &mut dec)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncated() {
        let bytes = crate::wire::encode_to_bytes(&data(10), &CodecConfig::default()).unwrap();
        let mut r = &bytes[..bytes.len() - 3];
        let mut buf = BytesMut::new();
        let mut dec = FrameDecoder::default();
        let err = read_frame(&mut r, &mut buf, &mut dec).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Decode(DecodeError::Truncated { needed, got })
                if needed == bytes.len() && got == bytes.len() - 3
        ));
        assert_eq!(err.close_code(), Some(0x105));
    }

    #[tokio::test]
    async fn too_large_is_refused_before_the_body() {
        // Only the prefix is ever sent; the reader must not wait for more.
        let mut r: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let mut buf = BytesMut::new();
        let mut dec = FrameDecoder::default();
        let err = read_frame(&mut r, &mut buf, &mut dec).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Decode(DecodeError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 2 * MIN_READ);
    }

    #[tokio::test]
    async fn write_refuses_too_large() {
        let mut out = Vec::new();
        let err = write_frame(&mut out, &data(100), &CodecConfig::new(50))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            WriteError::Encode(EncodeError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }
}
