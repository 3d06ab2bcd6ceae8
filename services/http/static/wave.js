// The received audio as a min/max envelope, the part already played in the accent colour,
// scaled to its loudest sample so quiet audio is visible too.
// The time axis grows with the audio (at least 5 s wide), so a stream fills it left to right.

const MIN_SPAN_S = 5;

/**
 * @param {HTMLCanvasElement} canvas
 * @param {Int16Array[]} chunks
 * @param {number} samples total samples in chunks
 * @param {number} sampleRate
 * @param {number} playedSeconds
 */
export function drawWave(canvas, chunks, samples, sampleRate, playedSeconds) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const style = getComputedStyle(canvas);
  context.clearRect(0, 0, width, height);
  context.fillStyle = style.getPropertyValue("--wave-axis") || "#ccc";
  context.fillRect(0, height / 2, width, 1);
  if (samples === 0) return;
  const perColumn = Math.max(1, Math.ceil(Math.max(samples, MIN_SPAN_S * sampleRate) / width));
  const playedColumn = (playedSeconds * sampleRate) / perColumn;
  const played = style.getPropertyValue("--wave-played") || "#2563eb";
  const pending = style.getPropertyValue("--wave-pending") || "#94a3b8";
  let peak = 1;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++) peak = Math.max(peak, Math.abs(chunk[i]));
  }
  const scale = (0.45 * height) / peak;
  let column = 0;
  let count = 0;
  let low = 0;
  let high = 0;
  const flush = () => {
    const top = height / 2 - high * scale;
    const bottom = height / 2 - low * scale;
    context.fillStyle = column < playedColumn ? played : pending;
    context.fillRect(column, top, 1, Math.max(1, bottom - top));
    column += 1;
    count = 0;
    low = 0;
    high = 0;
  };
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++) {
      const s = chunk[i];
      if (s < low) low = s;
      if (s > high) high = s;
      if (++count === perColumn) flush();
    }
  }
  if (count) flush();
}
