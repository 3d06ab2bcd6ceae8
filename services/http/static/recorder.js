// Microphone capture as raw PCM (an AudioWorklet), encoded to WAV in the page. getUserMedia
// only works in a secure context: https, or http://localhost / 127.0.0.1.
import { int16FromFloat32, wavFromInt16 } from "./wav.js";

export class MicRecorder {
  /** @param {(seconds: number) => void} onProgress */
  constructor(onProgress = () => {}) {
    this.onProgress = onProgress;
    this.context = null;
    this.stream = null;
    this.node = null;
    this.chunks = [];
    this.frames = 0;
  }

  static get available() {
    return Boolean(window.isSecureContext && navigator.mediaDevices && window.AudioWorkletNode);
  }

  async start() {
    // No processing: echo cancellation and noise suppression change the voice being cloned.
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule(new URL("./recorder-worklet.js", import.meta.url));
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "pcm-capture", { numberOfOutputs: 1 });
    this.node.port.onmessage = (event) => {
      const int16 = int16FromFloat32(event.data);
      this.chunks.push(int16);
      this.frames += int16.length;
      this.onProgress(this.seconds);
    };
    source.connect(this.node);
    // Connected to the destination so the graph pulls it; the processor writes silence.
    this.node.connect(this.context.destination);
  }

  get seconds() {
    return this.context ? this.frames / this.context.sampleRate : 0;
  }

  /** @returns {Promise<{blob: Blob, seconds: number, sampleRate: number}>} */
  async stop() {
    const sampleRate = this.context.sampleRate;
    const seconds = this.seconds;
    this.node.port.onmessage = null;
    this.node.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
    await this.context.close();
    return { blob: wavFromInt16(this.chunks, sampleRate), seconds, sampleRate };
  }
}
