// Plays raw s16le mono PCM while it streams in: each network chunk becomes an AudioBuffer
// scheduled right after the previous one on one AudioContext clock, so playback starts with
// the first chunk and has no gaps unless the network falls behind (counted as a stall).

const START_LEAD_S = 0.05; // headroom before the first buffer so its start is not already past

export class PcmStreamPlayer {
  /**
   * @param {AudioContext} context
   * @param {number} sampleRate rate of the incoming PCM (the server's 24 kHz)
   * @param {() => void} onChange called whenever a counter changes
   */
  constructor(context, sampleRate, onChange = () => {}) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.onChange = onChange;
    this.leftover = null; // odd byte of a sample split across two network chunks
    this.int16Chunks = []; // kept for the WAV download, bit-exact
    this.bytes = 0;
    this.samples = 0;
    this.scheduledSeconds = 0;
    this.playedSeconds = 0;
    this.stalls = 0;
    this.nextTime = 0;
    this.sources = new Set();
    this.pendingEnds = 0;
    this.finished = false;
    this.stopped = false;
    this._drained = null;
    this._resolveDrained = null;
  }

  /** @param {Uint8Array} chunk bytes as they came off the wire, any length */
  push(chunk) {
    if (this.stopped || chunk.byteLength === 0) return;
    this.bytes += chunk.byteLength;
    let bytes = chunk;
    if (this.leftover !== null) {
      bytes = new Uint8Array(chunk.byteLength + 1);
      bytes[0] = this.leftover;
      bytes.set(chunk, 1);
      this.leftover = null;
    }
    const whole = bytes.byteLength - (bytes.byteLength % 2);
    if (whole < bytes.byteLength) this.leftover = bytes[bytes.byteLength - 1];
    if (whole === 0) {
      this.onChange();
      return;
    }
    // A copy: the chunk's buffer may be unaligned for Int16Array, and the reader may reuse it.
    const pcm = new Int16Array(whole / 2);
    const view = new DataView(bytes.buffer, bytes.byteOffset, whole);
    for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(2 * i, true);
    this.int16Chunks.push(pcm);
    this.samples += pcm.length;
    this._schedule(pcm);
    this.onChange();
  }

  _schedule(pcm) {
    const buffer = this.context.createBuffer(1, pcm.length, this.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    if (this.nextTime < now) {
      if (this.scheduledSeconds > 0) this.stalls += 1; // the stream fell behind playback
      this.nextTime = now + START_LEAD_S;
    }
    source.start(this.nextTime);
    this.nextTime += buffer.duration;
    this.scheduledSeconds += buffer.duration;
    this.sources.add(source);
    this.pendingEnds += 1;
    source.onended = () => {
      this.sources.delete(source);
      if (this.stopped) return; // stop() already settled the counters
      this.pendingEnds -= 1;
      this.playedSeconds += buffer.duration;
      this.onChange();
      this._maybeDrained();
    };
  }

  /** The body ended: resolves once every scheduled buffer has played (its `ended` fired). */
  finish() {
    this.finished = true;
    if (!this._drained) {
      this._drained = new Promise((resolve) => { this._resolveDrained = resolve; });
    }
    this._maybeDrained();
    return this._drained;
  }

  _maybeDrained() {
    if (this.finished && this.pendingEnds === 0 && this._resolveDrained) {
      this._resolveDrained();
      this._resolveDrained = null;
    }
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) {
      try { source.stop(); } catch { /* never started */ }
    }
    this.finished = true;
    this.pendingEnds = 0;
    this._maybeDrained();
  }

  get receivedSeconds() {
    return this.samples / this.sampleRate;
  }
}
