// A small MessagePack encoder/decoder of our own for the interlocking
// browser client (no build step, no dependency). Covers what the wire
// format uses: nil, booleans, integers up to 64 bits, float64, UTF-8
// strings, binary (Uint8Array), arrays and string-keyed maps.
// Integers above 2^53 decode as BigInt; encode BigInt as uint64.

const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: true });

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.len = 0; }
  ensure(n) {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) { this.ensure(1); this.buf[this.len++] = b; }
  bytes(a) { this.ensure(a.length); this.buf.set(a, this.len); this.len += a.length; }
  u16(v) { this.byte(v >>> 8); this.byte(v & 0xff); }
  u32(v) { this.u16(Math.floor(v / 65536)); this.u16(v % 65536); }
  u64(v) {
    const big = BigInt(v);
    this.u32(Number(big >> 32n));
    this.u32(Number(big & 0xffffffffn));
  }
  done() { return this.buf.slice(0, this.len); }
}

function writeValue(w, v) {
  if (v === null || v === undefined) return w.byte(0xc0);
  if (v === false) return w.byte(0xc2);
  if (v === true) return w.byte(0xc3);
  if (typeof v === "bigint") { w.byte(0xcf); return w.u64(v); }
  if (typeof v === "number") {
    if (Number.isInteger(v) && v >= 0) {
      if (v < 0x80) return w.byte(v);
      if (v < 0x100) { w.byte(0xcc); return w.byte(v); }
      if (v < 0x10000) { w.byte(0xcd); return w.u16(v); }
      if (v < 0x100000000) { w.byte(0xce); return w.u32(v); }
      w.byte(0xcf); return w.u64(v);
    }
    if (Number.isInteger(v) && v >= -32) return w.byte(v & 0xff);
    if (Number.isInteger(v) && v >= -0x80000000) {
      w.byte(0xd2);
      return w.u32(v >>> 0);
    }
    w.byte(0xcb);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v);
    return w.bytes(b);
  }
  if (typeof v === "string") {
    const s = te.encode(v);
    if (s.length < 32) w.byte(0xa0 | s.length);
    else if (s.length < 0x100) { w.byte(0xd9); w.byte(s.length); }
    else if (s.length < 0x10000) { w.byte(0xda); w.u16(s.length); }
    else { w.byte(0xdb); w.u32(s.length); }
    return w.bytes(s);
  }
  if (v instanceof Uint8Array) {
    if (v.length < 0x100) { w.byte(0xc4); w.byte(v.length); }
    else if (v.length < 0x10000) { w.byte(0xc5); w.u16(v.length); }
    else { w.byte(0xc6); w.u32(v.length); }
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    if (v.length < 16) w.byte(0x90 | v.length);
    else if (v.length < 0x10000) { w.byte(0xdc); w.u16(v.length); }
    else { w.byte(0xdd); w.u32(v.length); }
    for (const x of v) writeValue(w, x);
    return;
  }
  if (typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length < 16) w.byte(0x80 | keys.length);
    else { w.byte(0xde); w.u16(keys.length); }
    for (const k of keys) { writeValue(w, k); writeValue(w, v[k]); }
    return;
  }
  throw new TypeError("msgpack: cannot encode " + typeof v);
}

/** Encodes one value into a Uint8Array. */
export function encode(v) {
  const w = new Writer();
  writeValue(w, v);
  return w.done();
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }
  need(n) { if (this.at + n > this.b.length) throw new RangeError("msgpack: truncated"); }
  u8() { this.need(1); return this.b[this.at++]; }
  u16() { this.need(2); const v = this.dv.getUint16(this.at); this.at += 2; return v; }
  u32() { this.need(4); const v = this.dv.getUint32(this.at); this.at += 4; return v; }
  u64() {
    this.need(8);
    const v = this.dv.getBigUint64(this.at); this.at += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  raw(n) { this.need(n); const v = this.b.slice(this.at, this.at + n); this.at += n; return v; }
  str(n) { return td.decode(this.raw(n)); }
  arr(n) { const a = []; for (let i = 0; i < n; i++) a.push(this.value()); return a; }
  map(n) {
    const m = {};
    for (let i = 0; i < n; i++) { const k = this.value(); m[k] = this.value(); }
    return m;
  }
  value() {
    const t = this.u8();
    if (t < 0x80) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return this.map(t & 0x0f);
    if ((t & 0xf0) === 0x90) return this.arr(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return this.str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.raw(this.u8());
      case 0xc5: return this.raw(this.u16());
      case 0xc6: return this.raw(this.u32());
      case 0xca: { this.need(4); const v = this.dv.getFloat32(this.at); this.at += 4; return v; }
      case 0xcb: { this.need(8); const v = this.dv.getFloat64(this.at); this.at += 8; return v; }
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return this.u64();
      case 0xd0: { const v = this.u8(); return v > 127 ? v - 256 : v; }
      case 0xd1: { this.need(2); const v = this.dv.getInt16(this.at); this.at += 2; return v; }
      case 0xd2: { this.need(4); const v = this.dv.getInt32(this.at); this.at += 4; return v; }
      case 0xd3: { this.need(8); const v = this.dv.getBigInt64(this.at); this.at += 8; return v; }
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.arr(this.u16());
      case 0xdd: return this.arr(this.u32());
      case 0xde: return this.map(this.u16());
      case 0xdf: return this.map(this.u32());
      default: throw new RangeError("msgpack: unsupported type 0x" + t.toString(16));
    }
  }
}

/** Decodes exactly one value from `bytes` (trailing bytes are an error). */
export function decode(bytes) {
  const r = new Reader(bytes);
  const v = r.value();
  if (r.at !== bytes.length) throw new RangeError("msgpack: trailing bytes");
  return v;
}
