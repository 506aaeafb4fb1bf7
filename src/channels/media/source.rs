//! Media sources: what application code implements to feed a media
//! stream ([`MediaSource`]), and a ready-made one that plays VP8 from an
//! IVF file and Opus from an Ogg file in a loop ([`FileSource`], using
//! the `rtc` crate's IVF and Ogg readers).
//!
//! Owns only the production of encoded samples; pacing, tiers and the
//! tracks are the media actor's.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtc::media::io::ivf_reader::IVFReader;
use rtc::media::io::ogg_reader::OggReader;

use super::tiers::Tier;
use crate::transports::webrtc::MediaKind;

/// One encoded sample: a VP8 frame or an Opus packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSample {
    /// The encoded bytes.
    pub data: Bytes,
    /// How long it plays.
    pub duration: Duration,
    /// A video key frame (decodable on its own).
    pub key: bool,
}

/// Why a source could not produce a sample.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The encoded input is not what the source expects.
    #[error("bad media input: {0}")]
    BadInput(String),
    /// The source has no track of this kind.
    #[error("no {0:?} track")]
    NoTrack(MediaKind),
}

/// Encoded samples for one media stream. Application code implements
/// this; one source instance serves one consumer (the actor asks for a
/// fresh one at every start, so a restart begins at a key frame).
pub trait MediaSource: Send + 'static {
    /// The next sample of `kind`; `None` when the source has ended.
    fn next_sample(&mut self, kind: MediaKind) -> Result<Option<MediaSample>, SourceError>;

    /// The stream's tier changed: a source with a cheaper encoding
    /// switches to it at [`Tier::Reduced`] (starting with a key frame).
    /// The default ignores it (the actor already drops video at
    /// audio-only and everything when paused).
    fn set_tier(&mut self, tier: Tier) {
        let _ = tier;
    }
}

/// Builds a fresh source for each stream (and each restart of its actor).
pub type SourceFactory = Arc<dyn Fn() -> Box<dyn MediaSource> + Send + Sync>;

/// VP8 frames read from IVF bytes, looping.
struct IvfLoop {
    bytes: Bytes,
    reader: IVFReader<Cursor<Bytes>>,
    frame: Duration,
}

impl IvfLoop {
    fn new(bytes: Bytes) -> Result<Self, SourceError> {
        let (reader, header) = IVFReader::new(Cursor::new(bytes.clone()))
            .map_err(|e| SourceError::BadInput(format!("ivf: {e}")))?;
        if &header.four_cc != b"VP80" {
            return Err(SourceError::BadInput(format!(
                "ivf codec {:?}, not VP8",
                String::from_utf8_lossy(&header.four_cc)
            )));
        }
        let (num, den) = (header.timebase_numerator, header.timebase_denominator);
        if num == 0 || den == 0 {
            return Err(SourceError::BadInput("ivf timebase is zero".into()));
        }
        let frame = Duration::from_secs_f64(f64::from(num) / f64::from(den));
        Ok(Self {
            bytes,
            reader,
            frame,
        })
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        *self = Self::new(self.bytes.clone())?;
        Ok(())
    }

    fn next(&mut self) -> Result<MediaSample, SourceError> {
        for _ in 0..2 {
            match self.reader.parse_next_frame() {
                Ok((frame, _)) => {
                    // RFC 6386 §9.1: bit 0 of the first byte is 0 for a key frame.
                    let key = frame.first().is_some_and(|b| b & 1 == 0);
                    return Ok(MediaSample {
                        data: frame.freeze(),
                        duration: self.frame,
                        key,
                    });
                }
                Err(_) => self.rewind()?,
            }
        }
        Err(SourceError::BadInput("ivf holds no frame".into()))
    }
}

/// Opus packets read from Ogg bytes (one packet per page), looping.
struct OggLoop {
    bytes: Bytes,
    reader: OggReader<Cursor<Bytes>>,
    granule: u64,
}

impl OggLoop {
    fn new(bytes: Bytes) -> Result<Self, SourceError> {
        let (reader, _) = OggReader::new(Cursor::new(bytes.clone()), true)
            .map_err(|e| SourceError::BadInput(format!("ogg: {e}")))?;
        Ok(Self {
            bytes,
            reader,
            granule: 0,
        })
    }

    fn next(&mut self) -> Result<MediaSample, SourceError> {
        // Bounded: a file of nothing but headers is refused, not looped.
        for _ in 0..8 {
            match self.reader.parse_next_page() {
                Ok((data, header)) => {
                    if data.starts_with(b"OpusTags") || data.starts_with(b"OpusHead") {
                        continue;
                    }
                    let samples = header.granule_position.saturating_sub(self.granule);
                    self.granule = header.granule_position;
                    let ms = (samples * 1000 / 48_000).clamp(1, 120);
                    return Ok(MediaSample {
                        data: data.freeze(),
                        duration: Duration::from_millis(ms),
                        key: true,
                    });
                }
                Err(_) => *self = Self::new(self.bytes.clone())?,
            }
        }
        Err(SourceError::BadInput("ogg holds no opus packet".into()))
    }
}

/// A looping source over in-memory files: VP8 in IVF (a full and an
/// optional reduced-bitrate encoding of the same picture) and Opus in Ogg
/// (one packet per page, e.g. `ffmpeg … -c:a libopus -page_duration 20000`).
pub struct FileSource {
    full: IvfLoop,
    reduced: Option<IvfLoop>,
    audio: OggLoop,
    tier: Tier,
    /// Switching encodings waits for the next key frame of the new one
    /// (which starts at its first frame, a key frame).
    use_reduced: bool,
}

impl FileSource {
    /// A source over the bytes of an IVF (VP8) and an Ogg (Opus) file.
    pub fn new(ivf: Bytes, ogg: Bytes) -> Result<Self, SourceError> {
        Ok(Self {
            full: IvfLoop::new(ivf)?,
            reduced: None,
            audio: OggLoop::new(ogg)?,
            tier: Tier::Full,
            use_reduced: false,
        })
    }

    /// Adds a reduced-bitrate encoding (IVF, VP8) used at [`Tier::Reduced`].
    pub fn with_reduced(mut self, ivf: Bytes) -> Result<Self, SourceError> {
        self.reduced = Some(IvfLoop::new(ivf)?);
        Ok(self)
    }

    /// A factory making a fresh `FileSource` over the same bytes each time.
    pub fn factory(
        ivf: Bytes,
        ogg: Bytes,
        reduced: Option<Bytes>,
    ) -> Result<SourceFactory, SourceError> {
        // Checked once here so the factory itself cannot fail.
        let mut probe = FileSource::new(ivf.clone(), ogg.clone())?;
        if let Some(r) = &reduced {
            probe = probe.with_reduced(r.clone())?;
        }
        probe.next_sample(MediaKind::Video)?;
        probe.next_sample(MediaKind::Audio)?;
        Ok(Arc::new(move || {
            let mut s = FileSource::new(ivf.clone(), ogg.clone()).expect("checked at creation");
            if let Some(r) = &reduced {
                s = s.with_reduced(r.clone()).expect("checked at creation");
            }
            Box::new(s) as Box<dyn MediaSource>
        }))
    }
}

impl MediaSource for FileSource {
    fn next_sample(&mut self, kind: MediaKind) -> Result<Option<MediaSample>, SourceError> {
        match kind {
            MediaKind::Audio => self.audio.next().map(Some),
            MediaKind::Video => {
                let want_reduced = self.tier == Tier::Reduced && self.reduced.is_some();
                if want_reduced != self.use_reduced {
                    self.use_reduced = want_reduced;
                    // Start the encoding switched to at its first (key) frame.
                    if let Some(r) = self.reduced.as_mut().filter(|_| want_reduced) {
                        r.rewind()?;
                    } else {
                        self.full.rewind()?;
                    }
                }
                match (self.use_reduced, self.reduced.as_mut()) {
                    (true, Some(r)) => r.next().map(Some),
                    _ => self.full.next().map(Some),
                }
            }
        }
    }

    fn set_tier(&mut self, tier: Tier) {
        self.tier = tier;
    }
}
