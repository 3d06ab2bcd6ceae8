// Runs on the audio thread: hands each 128-frame block of the microphone's first channel to
// the page, which keeps them until the recording stops. Outputs nothing (silence).
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) this.port.postMessage(channel.slice(0));
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
