// 16-bit PCM WAV files, written in the browser: for downloading a result and for turning a
// microphone recording into something the server's soundfile can read (it cannot read webm).

/**
 * @param {Int16Array[]} chunks mono samples
 * @param {number} sampleRate
 * @returns {Blob} audio/wav
 */
export function wavFromInt16(chunks, sampleRate) {
  const samples = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => {
    for (let i = 0; i < value.length; i++) header.setUint8(offset + i, value.charCodeAt(i));
  };
  text(0, "RIFF");
  header.setUint32(4, 36 + samples * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true); // fmt chunk size
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * 2, true); // byte rate
  header.setUint16(32, 2, true); // block align
  header.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  header.setUint32(40, samples * 2, true);
  // Int16Array is platform-endian; every browser platform is little-endian, as WAV is.
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

/** Float samples in [-1, 1] (Web Audio's) to 16-bit, clipping what is outside. */
export function int16FromFloat32(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
  }
  return out;
}
