// The interlocking browser client: speaks the crate's wire format
// (docs/wire.md) over WebRTC data channels to a hub (docs/webrtc.md §5).
//
//   const c = new Client({ base: "http://127.0.0.1:8080", token });
//   await c.connect();              // join with the token, negotiate
//   const reply = await c.command(21);   // a command to the hub's handler
//   c.close();
//
// Commands carry message ids; after an ICE restart or a fresh session the
// unanswered ones are sent again with the same ids, and the hub's command
// server applies each id once.

import { encode, decode } from "./msgpack.js";

/** Frame kind codes (docs/wire.md §4). */
export const KIND = { Hello: 1, Probe: 2, ProbeAck: 3, Data: 4, Ack: 5, Reject: 6, Close: 7 };
/** The protocol version this client speaks (docs/wire.md, header byte 4). */
export const VERSION = 2;
const CHANNELS = 5;
const MAX_MESSAGE = 16 * 1024;
/** How long a fresh session waits for the hub's first frame. */
const HEAR_HUB_MS = 5000;

/** Encodes one frame: 4-byte big-endian length, version, kind, body. */
export function encodeFrame(kind, body) {
  const b = encode(body);
  const out = new Uint8Array(6 + b.length);
  new DataView(out.buffer).setUint32(0, 2 + b.length);
  out[4] = VERSION;
  out[5] = kind;
  out.set(b, 6);
  return out;
}

/** Reassembles frames from data-channel messages (a frame starts a message). */
export class FrameReader {
  constructor(max = 1 << 20) { this.buf = new Uint8Array(0); this.max = max; }
  push(chunk) {
    const next = new Uint8Array(this.buf.length + chunk.length);
    next.set(this.buf);
    next.set(chunk, this.buf.length);
    this.buf = next;
    const frames = [];
    while (this.buf.length >= 6) {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0);
      if (len < 2 || len > this.max || this.buf[4] !== VERSION) {
        this.buf = new Uint8Array(0);
        throw new RangeError("frame header refused");
      }
      if (this.buf.length < 4 + len) break;
      frames.push({ kind: this.buf[5], body: decode(this.buf.slice(6, 4 + len)) });
      this.buf = this.buf.slice(4 + len);
    }
    return frames;
  }
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) {
    const e = new Error(json.reason || ("HTTP " + r.status));
    e.code = json.code;
    throw e;
  }
  return json;
}

export class Client {
  /** `base`: the hub's page server; `token`: a single-use browser join token. */
  /**
   * `resendMs`: an unanswered command is sent again (same id) this often;
   * `timeoutMs`: then its promise rejects with `code: "timeout"`.
   */
  constructor({ base, token, resendMs = 1000, timeoutMs = 30000, relayOnly = false }) {
    this.base = base;
    this.token = token;
    // Only TURN-relayed candidates (the root's TURN server, from /join).
    this.relayOnly = relayOnly;
    this.resendMs = resendMs;
    this.timeoutMs = timeoutMs;
    this.pending = new Map(); // message id -> { frame, resolve, reject, sent, until }
    this.timer = null;
    this.nextId = 1;
    this.session = Date.now() * 1000;
    // The sender incarnation of this page's command stream (docs/channels.md):
    // one per page, so every resend shares the dedupe keyspace.
    this.incarnation = Date.now() * 256 + Math.floor(Math.random() * 256);
    this.generation = 0;
    this.onReject = () => {};
    this.onState = () => {};
  }

  /** Joins with the token, then negotiates the data channels. */
  async connect() {
    const j = await post(this.base + "/join", { token: this.token });
    this.node = j.node;
    this.secret = j.secret;
    this.stream = j.stream;
    this.iceServers = j.ice_servers || [];
    this.cert = await RTCPeerConnection.generateCertificate({ name: "ECDSA", namedCurve: "P-256" });
    await this.fresh();
  }

  /** A new session: new connection (same certificate, so the same fingerprint). */
  async fresh() {
    if (this.pc) this.pc.close();
    this.session += 1;
    this.generation = 0;
    const pc = new RTCPeerConnection({
      certificates: [this.cert],
      iceServers: this.iceServers,
      iceTransportPolicy: this.relayOnly ? "relay" : "all",
    });
    this.pc = pc;
    this.channels = [];
    this.reader = new FrameReader();
    // Nothing but ProbeAcks is sent until a frame from the hub arrives (the
    // hub probes as soon as its end of the channels is open): a message that
    // reaches the hub while its channels are still opening can be lost by
    // its stack after SCTP has acknowledged it (docs/webrtc.md §5).
    this.heard = false;
    const heard = new Promise((resolve) => { this.onHeard = resolve; });
    let opened = 0;
    const open = new Promise((resolve) => {
      for (let i = 0; i < CHANNELS; i++) {
        const dc = pc.createDataChannel("il/" + i, { negotiated: true, id: i, ordered: true });
        dc.binaryType = "arraybuffer";
        dc.onopen = () => { if (++opened === CHANNELS) resolve(); };
        dc.onmessage = (e) => this.onMessage(new Uint8Array(e.data));
        dc.onclose = () => { if (this.pc === pc && !this.closing) this.recover(); };
        this.channels.push(dc);
      }
    });
    pc.oniceconnectionstatechange = () => {
      this.onState(pc.iceConnectionState);
      if (this.pc === pc && pc.iceConnectionState === "failed") this.restartIce();
    };
    await this.negotiate();
    await open;
    let silent;
    const limit = new Promise((_, reject) => {
      silent = setTimeout(() => reject(new Error("the hub sent nothing on the open channels")), HEAR_HUB_MS);
    });
    try { await Promise.race([heard, limit]); } finally { clearTimeout(silent); }
    this.resendAll();
  }

  /** Sets a new local offer and waits for every candidate. */
  async localOffer() {
    const pc = this.pc;
    this.generation += 1;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") resolve();
        });
      });
    }
  }

  /**
   * Asks the hub for the media source `source` (docs/media.md): adds a
   * receive-only video and audio transceiver, offers them to `/media`,
   * and applies the answer carrying the hub's tracks. Resolves with
   * `{ stream, video, audio }` (the two MediaStreamTracks); a refusal
   * rejects with the hub's `code` (0x0330..) and undoes the offer.
   */
  async media(source) {
    const pc = this.pc;
    const video = pc.addTransceiver("video", { direction: "recvonly" });
    const audio = pc.addTransceiver("audio", { direction: "recvonly" });
    await this.localOffer();
    let a;
    try {
      a = await post(this.base + "/media", {
        node: this.node,
        secret: this.secret,
        source,
        session: this.session,
        generation: this.generation,
        sdp: pc.localDescription.sdp,
      });
    } catch (e) {
      await pc.setLocalDescription({ type: "rollback" });
      video.stop();
      audio.stop();
      throw e;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: a.sdp });
    return { stream: a.stream, video: video.receiver.track, audio: audio.receiver.track };
  }

  /** This page's media streams as the hub reports them (tier, path, …). */
  async mediaStatus() {
    return post(this.base + "/media/status", { node: this.node, secret: this.secret });
  }

  /** Inbound RTP figures: `{ framesDecoded, videoPackets, audioPackets, packetsLost }`. */
  async mediaStats() {
    const out = { framesDecoded: 0, videoPackets: 0, audioPackets: 0, packetsLost: 0 };
    const stats = await this.pc.getStats();
    for (const s of stats.values()) {
      if (s.type !== "inbound-rtp") continue;
      out.packetsLost += s.packetsLost || 0;
      if (s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.videoPackets += s.packetsReceived || 0;
      } else if (s.kind === "audio") {
        out.audioPackets += s.packetsReceived || 0;
      }
    }
    return out;
  }

  /** Offer (with every candidate), post it, apply the answer. */
  async negotiate() {
    const pc = this.pc;
    await this.localOffer();
    const a = await post(this.base + "/offer", {
      node: this.node,
      secret: this.secret,
      session: this.session,
      generation: this.generation,
      sdp: pc.localDescription.sdp,
    });
    await pc.setRemoteDescription({ type: "answer", sdp: a.sdp });
  }

  async restartIce() {
    this.pc.restartIce();
    await this.negotiate();
    this.resendAll();
  }

  resendAll() {
    const now = Date.now();
    for (const p of this.pending.values()) { p.sent = now; this.send(p.frame); }
  }

  /** Resends what is unanswered after `resendMs`; rejects what is past `timeoutMs`. */
  tick() {
    const now = Date.now();
    for (const [id, p] of this.pending) {
      if (now >= p.until) {
        this.pending.delete(id);
        p.reject(Object.assign(new Error("no reply within " + this.timeoutMs + " ms"), { code: "timeout" }));
      } else if (now - p.sent >= this.resendMs) {
        p.sent = now;
        this.send(p.frame);
      }
    }
    if (this.pending.size === 0) { clearInterval(this.timer); this.timer = null; }
  }

  async recover() {
    try { await this.fresh(); } catch (e) { this.onState("recover failed: " + e.message); }
  }

  /** Sends `value` as a command; resolves with the handler's reply. */
  command(value) {
    const id = this.nextId++;
    const envelope = ["Command", id, this.stream, Date.now(), 0, 0, null, encode(value)];
    // Data: [stream, incarnation, seq 0 (unordered), id, class 0, delivery C, payload].
    const frame = encodeFrame(KIND.Data, [this.stream, this.incarnation, 0, id, 0, 2, encode(envelope)]);
    return new Promise((resolve, reject) => {
      const now = Date.now();
      this.pending.set(id, { frame, resolve, reject, sent: now, until: now + this.timeoutMs });
      this.send(frame);
      if (!this.timer) this.timer = setInterval(() => this.tick(), Math.max(10, this.resendMs / 4));
    });
  }

  /** The local candidate type of the selected pair ("host", "relay", …). */
  async candidateType() {
    const stats = await this.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        if (local) return local.candidateType;
      }
    }
    return null;
  }

  /** Sends raw bytes on the control channel (tests). */
  sendRaw(bytes) { this.channels[0].send(bytes); }

  send(frame) {
    const dc = this.channels && this.channels[0];
    // Not yet heard from the hub, or not open: resent once it is.
    if (!dc || dc.readyState !== "open" || !this.heard) return;
    for (let at = 0; at < frame.length; at += MAX_MESSAGE) {
      dc.send(frame.subarray(at, Math.min(frame.length, at + MAX_MESSAGE)));
    }
  }

  onMessage(bytes) {
    let frames;
    try { frames = this.reader.push(bytes); } catch (e) { return; }
    if (frames.length > 0 && !this.heard) { this.heard = true; this.onHeard(); }
    for (const f of frames) {
      if (f.kind === KIND.Probe) {
        this.send(encodeFrame(KIND.ProbeAck, [f.body[0], f.body[1]]));
      } else if (f.kind === KIND.Data) {
        const env = decode(f.body[6]);
        const [kind, id, , , , , , body] = env;
        const p = this.pending.get(id);
        if (kind !== "Reply" || !p) continue;
        this.pending.delete(id);
        const outcome = decode(body);
        if (outcome && outcome.Ok !== undefined) p.resolve(decode(outcome.Ok));
        else p.reject(new Error(JSON.stringify(outcome)));
      } else if (f.kind === KIND.Reject) {
        const [, messageId, code, reason] = f.body;
        this.onReject(code, reason);
        const p = messageId != null && this.pending.get(messageId);
        if (p) { this.pending.delete(messageId); p.reject(Object.assign(new Error(reason), { code })); }
      } else if (f.kind === KIND.Close) {
        if (!this.closing) this.recover();
      }
    }
  }

  close() {
    this.closing = true;
    if (this.timer) { clearInterval(this.timer); this.timer = null; }
    if (this.pc) this.pc.close();
  }
}
