// The HTTP API as the page uses it: the same public endpoints a user's code calls
// (docs/http.md). URLs are relative, so the page also works behind a path prefix.

export const PCM_SAMPLE_RATE = 24000; // response_format=pcm: s16le mono 24 kHz

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  toString() {
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

const shellQuote = (value) => `'${String(value).replaceAll("'", "'\\''")}'`;

function curlCommand(path, apiKey, args) {
  const auth = apiKey ? ' -H "Authorization: Bearer $KEY"' : "";
  return `curl -N ${location.origin}/${path}${auth} ${args.join(" ")} -o out.pcm`;
}

function headers(apiKey, extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

/** The server's `{"error": {"code", "message"}}`, or whatever text came back instead. */
export async function errorFrom(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    if (error && error.message) return new ApiError(response.status, error.code || "error", error.message);
  } catch { /* not JSON: a proxy's page, say */ }
  return new ApiError(response.status, response.statusText || "error", text.slice(0, 300) || "no body");
}

async function checked(response) {
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** @returns {Promise<{name: string, preset: boolean, promptText: string}[]>} */
export async function listVoices(apiKey) {
  const response = await checked(await fetch("v1/audio/voices", { headers: headers(apiKey) }));
  const body = await response.json();
  const items = Array.isArray(body) ? body : body.voices || body.data || [];
  return items.map((item) => (typeof item === "string"
    ? { name: item, preset: false, promptText: "" }
    : { name: item.name || item.voice_id || item.id, preset: Boolean(item.preset), promptText: item.prompt_text || "" }));
}

/** Registers a recording as a named voice (the server extracts its features once). */
export async function registerVoice(apiKey, { name, promptText, audio, filename }) {
  const form = new FormData();
  form.append("name", name);
  form.append("prompt_text", promptText);
  form.append("audio", audio, filename || "prompt.wav");
  const response = await checked(await fetch("v1/audio/voices", { method: "POST", headers: headers(apiKey), body: form }));
  return response.json();
}

export async function deleteVoice(apiKey, name) {
  await checked(await fetch(`v1/audio/voices/${encodeURIComponent(name)}`, { method: "DELETE", headers: headers(apiKey) }));
}

export async function ready() {
  try {
    return (await fetch("readyz")).ok;
  } catch {
    return false;
  }
}

/**
 * The request for one synthesis, answered with raw PCM (s16le, 24 kHz) streamed as it is made.
 * A named voice in a mode the OpenAI endpoint infers by itself goes there; cross-lingual and
 * an inline prompt recording go to the native endpoint of the mode.
 * @returns {{url: string, init: RequestInit, curl: string}}
 */
export function speechRequest(apiKey, { mode, text, voice, instruct, speed, prompt, promptText }) {
  const stream = speed === 1; // the model changes speed only on a whole utterance
  if (!prompt && mode !== "cross_lingual") {
    const body = { model: "cosyvoice2", input: text, voice, response_format: "pcm", speed };
    if (stream) body.stream_format = "audio";
    if (mode === "instruct2") body.instructions = instruct;
    const json = JSON.stringify(body);
    return {
      url: "v1/audio/speech",
      init: { method: "POST", headers: headers(apiKey, { "Content-Type": "application/json" }), body: json },
      curl: curlCommand("v1/audio/speech", apiKey, ["-H 'Content-Type: application/json'", `-d ${shellQuote(json)}`]),
    };
  }
  const form = new FormData();
  form.append("text", text);
  form.append("response_format", "pcm");
  form.append("stream", String(stream));
  if (!stream) form.append("speed", String(speed));
  if (prompt) {
    form.append("prompt_audio", prompt.blob, prompt.filename);
    if (mode === "zero_shot") form.append("prompt_text", promptText);
  } else {
    form.append("voice", voice);
  }
  if (mode === "instruct2") form.append("instruct_text", instruct);
  const path = `v1/tts/${mode}`;
  return {
    url: path,
    init: { method: "POST", headers: headers(apiKey), body: form },
    curl: curlCommand(path, apiKey, [...form.entries()].map(([name, value]) => (
      value instanceof Blob ? `-F ${shellQuote(`${name}=@${value.name || "prompt.wav"}`)}` : `-F ${shellQuote(`${name}=${value}`)}`))),
  };
}
