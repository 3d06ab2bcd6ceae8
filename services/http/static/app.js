// The playground's page logic: the form, the voice list, the prompt recording, and one
// streaming synthesis at a time played through PcmStreamPlayer.
import { PCM_SAMPLE_RATE, deleteVoice, errorFrom, listVoices, ready, registerVoice, speechRequest } from "./api.js";
import { PcmStreamPlayer } from "./player.js";
import { MicRecorder } from "./recorder.js";
import { wavFromInt16 } from "./wav.js";
import { drawWave } from "./wave.js";

const $ = (id) => document.getElementById(id);
const PROMPT_OPTION = "__prompt__"; // the voice select's "use the prompt recording" entry

const ui = {
  apiKey: $("api-key"), server: $("server"), form: $("synth-form"), text: $("text"), mode: $("mode"),
  voice: $("voice"), refresh: $("refresh-voices"), deleteVoice: $("delete-voice"), speed: $("speed"),
  speedValue: $("speed-value"), speedHelp: $("speed-help"), instructField: $("instruct-field"),
  instruct: $("instruct"), synthesize: $("synthesize"), stop: $("stop"), promptFile: $("prompt-file"),
  record: $("record"), promptStatus: $("prompt-status"), promptPreview: $("prompt-preview"),
  promptText: $("prompt-text"), voiceName: $("voice-name"), register: $("register"), state: $("state"),
  stats: $("stats"), ttfa: $("ttfa"), rtf: $("rtf"), audioSeconds: $("audio-seconds"),
  playedSeconds: $("played-seconds"), bytes: $("bytes"), stalls: $("stalls"), wave: $("wave"),
  error: $("error"), download: $("download"), requestLine: $("request-line"),
};

let voices = []; // [{name, preset, promptText}]
let prompt = null; // {blob, filename, seconds?}
let recorder = null;
let audioContext = null;
let current = null; // the synthesis in flight: {controller, player, ...}
let requestId = 0;

// ---- small helpers -------------------------------------------------------------------------

function showError(error) {
  // ApiError prints as "STATUS code: message"; other errors by their message alone.
  const text = !error || typeof error === "string" || error.status ? String(error || "") : error.message || String(error);
  ui.error.textContent = text;
  ui.error.hidden = !error;
}

function setState(state) {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  ui.stats.dataset.state = state;
}

function apiKey() {
  return ui.apiKey.value.trim();
}

// ---- voices and modes ----------------------------------------------------------------------

function voicesForMode(mode) {
  if (mode === "sft") return voices.filter((v) => v.preset);
  // The other modes need a recording's features, which only registered voices have.
  return voices.filter((v) => !v.preset);
}

function fillVoiceSelect(preferred) {
  const mode = ui.mode.value;
  const keep = preferred ?? ui.voice.value;
  ui.voice.replaceChildren();
  for (const voice of voicesForMode(mode)) {
    const option = new Option(voice.preset ? `${voice.name} (preset)` : voice.name, voice.name);
    ui.voice.append(option);
  }
  if (mode !== "sft") ui.voice.append(new Option("— the prompt recording below —", PROMPT_OPTION));
  const names = [...ui.voice.options].map((o) => o.value);
  if (names.includes(keep)) ui.voice.value = keep;
  onVoiceChange();
}

function onVoiceChange() {
  ui.deleteVoice.disabled = ui.voice.value === PROMPT_OPTION || !ui.voice.value
    || voices.some((v) => v.name === ui.voice.value && v.preset);
}

async function loadVoices(preferred) {
  try {
    voices = await listVoices(apiKey());
    ui.stats.dataset.voices = String(voices.length);
    fillVoiceSelect(preferred);
  } catch (error) {
    showError(`Could not list voices: ${error}`);
  }
}

function onModeChange() {
  ui.instructField.hidden = ui.mode.value !== "instruct2";
  fillVoiceSelect();
}

function onSpeedChange() {
  const speed = Number(ui.speed.value);
  ui.speedValue.textContent = `${speed.toFixed(2)}×`;
  ui.speedHelp.hidden = speed === 1;
}

// ---- prompt recording ----------------------------------------------------------------------

function setPrompt(next, description) {
  prompt = next;
  if (ui.promptPreview.src) URL.revokeObjectURL(ui.promptPreview.src);
  ui.promptPreview.hidden = !next;
  if (next) ui.promptPreview.src = URL.createObjectURL(next.blob);
  ui.promptStatus.textContent = description;
  ui.promptStatus.dataset.ready = next ? "true" : "false";
}

function onPromptFile() {
  const file = ui.promptFile.files[0];
  if (file) setPrompt({ blob: file, filename: file.name }, `Uploaded ${file.name} (${Math.round(file.size / 1024)} KiB).`);
}

async function onRecord() {
  if (recorder) {
    const done = recorder;
    recorder = null;
    ui.record.textContent = "● Record";
    ui.record.setAttribute("aria-pressed", "false");
    const { blob, seconds, sampleRate } = await done.stop();
    setPrompt({ blob, filename: "recording.wav", seconds },
      `Recorded ${seconds.toFixed(1)} s at ${sampleRate / 1000} kHz (WAV).`);
    return;
  }
  showError(null);
  recorder = new MicRecorder((seconds) => {
    ui.promptStatus.textContent = `Recording… ${seconds.toFixed(1)} s (3–30 s works best)`;
    ui.promptStatus.dataset.recordingSeconds = seconds.toFixed(2);
  });
  try {
    await recorder.start();
    ui.record.textContent = "■ Stop recording";
    ui.record.setAttribute("aria-pressed", "true");
  } catch (error) {
    recorder = null;
    showError(`Microphone: ${error.message || error}`);
  }
}

async function onRegister() {
  showError(null);
  const name = ui.voiceName.value.trim();
  if (!prompt) return showError("Register: upload or record a prompt first.");
  if (!name) return showError("Register: give the voice a name.");
  if (!ui.promptText.value.trim()) return showError("Register: type what is said in the recording.");
  ui.register.disabled = true;
  try {
    await registerVoice(apiKey(), { name, promptText: ui.promptText.value.trim(), audio: prompt.blob, filename: prompt.filename });
    if (ui.mode.value === "sft") ui.mode.value = "zero_shot";
    onModeChange();
    await loadVoices(name);
    ui.promptStatus.textContent = `Registered voice “${name}”.`;
    ui.stats.dataset.registered = name;
  } catch (error) {
    showError(error);
  } finally {
    ui.register.disabled = false;
  }
}

async function onDeleteVoice() {
  const name = ui.voice.value;
  if (!name || name === PROMPT_OPTION || !confirm(`Delete the voice “${name}”?`)) return;
  try {
    await deleteVoice(apiKey(), name);
    await loadVoices();
    ui.promptStatus.textContent = `Deleted voice “${name}”.`;
  } catch (error) {
    showError(error);
  }
}

// ---- synthesis -----------------------------------------------------------------------------

function renderStats() {
  const run = current;
  if (!run) return;
  const { player } = run;
  const data = ui.stats.dataset;
  data.bytes = String(player.bytes);
  data.chunks = String(run.chunks);
  data.audioSeconds = player.receivedSeconds.toFixed(3);
  data.scheduledSeconds = player.scheduledSeconds.toFixed(3);
  data.playedSeconds = player.playedSeconds.toFixed(3);
  data.stalls = String(player.stalls);
  data.contextTime = audioContext.currentTime.toFixed(3);
  data.ttfaMs = run.ttfaMs === null ? "" : run.ttfaMs.toFixed(0);
  data.rtf = run.rtf === null ? "" : run.rtf.toFixed(3);
  ui.ttfa.textContent = run.ttfaMs === null ? "–" : `${run.ttfaMs.toFixed(0)} ms`;
  ui.rtf.textContent = run.rtf === null ? "–" : run.rtf.toFixed(2);
  ui.audioSeconds.textContent = `${player.receivedSeconds.toFixed(2)} s`;
  ui.playedSeconds.textContent = `${player.playedSeconds.toFixed(2)} s`;
  ui.bytes.textContent = player.bytes.toLocaleString("en");
  ui.stalls.textContent = String(player.stalls);
  if (!run.drawPending) {
    run.drawPending = true;
    requestAnimationFrame(() => {
      run.drawPending = false;
      drawWave(ui.wave, player.int16Chunks, player.samples, player.sampleRate, player.playedSeconds);
    });
  }
}

function synthesisOptions() {
  const usePrompt = ui.voice.value === PROMPT_OPTION;
  return {
    mode: ui.mode.value,
    text: ui.text.value,
    voice: usePrompt ? "" : ui.voice.value,
    instruct: ui.instruct.value,
    speed: Number(ui.speed.value),
    prompt: usePrompt ? prompt : null,
    promptText: ui.promptText.value.trim(),
  };
}

async function synthesize(event) {
  event.preventDefault();
  if (current) stopSynthesis();
  showError(null);
  const options = synthesisOptions();
  if (!options.text.trim()) return showError("Type some text first.");
  if (ui.voice.value === PROMPT_OPTION && !prompt) return showError("Upload or record a prompt, or pick a voice.");
  if (!options.voice && !options.prompt) return showError("Pick a voice.");
  const clicked = performance.now();
  // Made (or resumed) inside the click: browsers only let a user gesture start audio.
  audioContext = audioContext || new AudioContext();
  await audioContext.resume();
  const request = speechRequest(apiKey(), options);
  ui.requestLine.textContent = `POST /${request.url}\n\n${request.curl}`;
  const controller = new AbortController();
  const player = new PcmStreamPlayer(audioContext, PCM_SAMPLE_RATE, () => renderStats());
  const run = { controller, player, chunks: 0, ttfaMs: null, rtf: null, drawPending: false };
  current = run;
  ui.stats.dataset.requestId = String(++requestId);
  ui.download.hidden = true;
  ui.synthesize.disabled = true;
  ui.stop.disabled = false;
  setState("requesting");
  renderStats();
  try {
    const response = await fetch(request.url, { ...request.init, signal: controller.signal });
    if (!response.ok) throw await errorFrom(response);
    const rate = Number(response.headers.get("x-sample-rate")) || PCM_SAMPLE_RATE;
    player.sampleRate = rate;
    setState("streaming");
    const reader = response.body.getReader();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        // The status was 200 already: a failure later can only close the connection.
        if (player.samples > 0) offerDownload(player);
        throw new Error(`the stream broke after ${player.receivedSeconds.toFixed(2)} s of audio `
          + `(${error.message}); the server's log says why`);
      }
      const { done, value } = chunk;
      if (done) break;
      if (!value || value.byteLength === 0) continue;
      if (run.ttfaMs === null) run.ttfaMs = performance.now() - clicked;
      run.chunks += 1;
      player.push(value);
    }
    if (player.samples === 0) throw new Error("the server answered with no audio");
    run.rtf = (performance.now() - clicked) / 1000 / player.receivedSeconds;
    offerDownload(player);
    setState("playing");
    renderStats();
    await player.finish();
    if (current === run) setState(player.stopped ? "stopped" : "done");
  } catch (error) {
    if (current !== run) return; // replaced by a newer request, which owns the page now
    if (error.name === "AbortError") {
      setState("stopped");
    } else {
      setState("error");
      showError(error);
      refreshServer();
    }
  } finally {
    if (current === run) {
      renderStats();
      current = null;
      ui.synthesize.disabled = false;
      ui.stop.disabled = true;
    }
  }
}

function stopSynthesis() {
  if (!current) return;
  current.controller.abort();
  current.player.stop();
}

function offerDownload(player) {
  if (ui.download.href) URL.revokeObjectURL(ui.download.href);
  ui.download.href = URL.createObjectURL(wavFromInt16(player.int16Chunks, player.sampleRate));
  ui.download.hidden = false;
}

async function refreshServer() {
  const ok = await ready();
  ui.server.textContent = ok ? "server ready" : "server not ready";
  ui.server.dataset.state = ok ? "done" : "error";
}

// ---- wiring --------------------------------------------------------------------------------

ui.form.addEventListener("submit", synthesize);
ui.stop.addEventListener("click", stopSynthesis);
ui.mode.addEventListener("change", onModeChange);
ui.voice.addEventListener("change", onVoiceChange);
ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
});
ui.speed.addEventListener("input", onSpeedChange);
ui.refresh.addEventListener("click", () => loadVoices());
ui.deleteVoice.addEventListener("click", onDeleteVoice);
ui.promptFile.addEventListener("change", onPromptFile);
ui.record.addEventListener("click", onRecord);
ui.register.addEventListener("click", onRegister);
ui.apiKey.addEventListener("change", () => loadVoices());
if (!MicRecorder.available) {
  ui.record.disabled = true;
  ui.record.title = "The microphone needs https or http://localhost";
}
onModeChange();
onSpeedChange();
refreshServer();
loadVoices().then(() => { document.body.dataset.ready = "true"; });
