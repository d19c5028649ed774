// DCE softphone: a small SIP-over-WebSocket user agent (RFC 7118) with WebRTC audio.
//
// One call at a time, caller side only: INVITE with a complete (non-trickle) WebRTC offer,
// digest retry on 401/407 (RFC 8760 SHA-256 via WebCrypto), ACK, BYE, CANCEL, re-INVITE
// answered, BYE from the far end, DTMF as RFC 4733 in the media stream (RTCDTMFSender) or
// SIP INFO when the browser cannot. The transport is reliable, so no retransmission timers
// (RFC 3261 §17.1.1.2: Timer A is not used over reliable transports).
//
// When a call fails the page says why: a refused WebSocket token (asked of /phone/check, since
// a browser cannot read a refused upgrade's status), no microphone, or the SIP final status
// with its Reason rule (no_campaign, no_eligible_buyer, calling_hours ...). While a call is up
// it warns when no audio leaves the browser (muted, unplugged, silent, nothing sent).
//
// Tests drive the page through `window.dcePhone` (call, hangup, dtmf, mute, stats, state,
// failure, warning).

const CRLF = "\r\n";
const COMPACT = { v: "via", f: "from", t: "to", i: "call-id", m: "contact", l: "content-length",
                  c: "content-type", k: "supported" };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Below this RMS (about -90 dBFS) for SILENT_MS the microphone is taken as sending nothing:
// digital silence, as a muted or absent device gives, not a quiet room.
const SILENCE = 3e-5;
const SILENT_MS = 4000;

// Why a call failed, for the page and for tests: a short cause and a sentence.
class PhoneError extends Error {
  constructor(cause, text) {
    super(text);
    this.cause = cause;
  }
}

// The rule in a Reason header (RFC 3326), as the switch names it, in words.
const RULES = {
  no_campaign: "no campaign owns this number",
  campaign_inactive: "the campaign for this number is paused",
  no_eligible_buyer: "no buyer takes this call now",
  no_buyer: "no buyer takes this call now",
  endpoints_down: "every buyer endpoint for this call is down",
  no_reachable_endpoint: "no buyer endpoint could be reached",
  ring_timeout: "the buyer did not answer",
  no_response: "the buyer's endpoint did not respond",
  invalid_number: "the number, or the caller's, is not a valid phone number",
  calling_hours: "outside the calling hours",
  dnc: "the caller is on a do-not-call list",
  dnc_stale: "a do-not-call list the campaign needs is missing or out of date",
  consent: "no consent on record for this caller",
  suppressed: "the caller's number was erased and is blocked",
  attestation: "the caller ID attestation is too weak",
  fraud: "refused by the fraud check",
  overload: "the switch is busy: try again in a moment",
  trunk_cps: "too many calls per second on this trunk",
  trunk_concurrent: "too many calls at once on this trunk",
  operator_hangup: "the operator ended the call",
  shutdown: "the switch is shutting down",
  sdp: "the browser's audio offer was not usable",
  no_media_ports: "the switch has no free media ports",
};
const STATUSES = {
  401: "the switch wants a digest user and password (Account)",
  407: "the switch wants a digest user and password (Account)",
  403: "not admitted: no trunk takes calls from this phone (token or credentials)",
  404: "no such number",
  480: "nobody is available",
  486: "busy",
  488: "the audio formats did not match",
  600: "busy",
  603: "declined",
};

// A SIP final response in words: "<why> (404 Not Found, no_campaign)".
function explain(status, phrase, reason) {
  const m = /text="([^"]*)"/.exec(reason || "");
  const rule = m ? m[1] : null;
  const why = (rule && RULES[rule]) || (rule ? `refused by the rule ${rule}` : null) ||
    STATUSES[status] || "the call failed";
  return { cause: rule || String(status), rule, status,
           text: `${why} (${status} ${phrase}${rule ? `, ${rule}` : ""})` };
}

// Why the WebSocket to /sip failed: the token (asked of /phone/check), or the switch.
async function whyRefused(token) {
  try {
    const q = token === null ? "" : `?token=${encodeURIComponent(token)}`;
    const r = await fetch(`/phone/check${q}`, { cache: "no-store" });
    const { token: verdict } = await r.json();
    if (verdict === "refused") {
      return new PhoneError("token_refused",
        "token refused: it is not the ws_token of any trunk (check the link or Account)");
    }
    return new PhoneError("websocket_refused",
      "the switch refused the connection (busy, or too many connections from this address)");
  } catch (err) {
    return new PhoneError("unreachable", "the switch does not answer: is it running?");
  }
}

// getUserMedia's errors in words.
function micError(err) {
  const name = err && err.name;
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new PhoneError("no_microphone", "no microphone found: plug one in and call again");
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new PhoneError("microphone_denied", "microphone access denied: allow it for this page");
  }
  if (name === "NotReadableError") {
    return new PhoneError("microphone_busy", "the microphone is in use elsewhere or failed");
  }
  return new PhoneError("no_microphone", `no microphone: ${err && err.message || err}`);
}

function rand(n = 10) {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(bytes, (b) => (b % 36).toString(36)).join("");
}

// ------------------------------------------------------------------ SIP messages

function parseMessage(text) {
  const split = text.indexOf(CRLF + CRLF);
  const head = split >= 0 ? text.slice(0, split) : text;
  let body = split >= 0 ? text.slice(split + 4) : "";
  const lines = head.split(CRLF);
  const start = lines.shift();
  const headers = new Map();
  for (const line of lines) {
    const at = line.indexOf(":");
    if (at <= 0) continue;
    let name = line.slice(0, at).trim().toLowerCase();
    name = COMPACT[name] || name;
    const value = line.slice(at + 1).trim();
    if (!headers.has(name)) headers.set(name, []);
    headers.get(name).push(value);
  }
  const msg = { headers, body };
  const status = /^SIP\/2\.0 (\d{3}) ?(.*)$/.exec(start);
  if (status) {
    msg.status = Number(status[1]);
    msg.reason = status[2];
  } else {
    const req = /^([A-Z]+) (\S+) SIP\/2\.0$/.exec(start);
    if (!req) throw new Error("not a SIP message");
    msg.method = req[1];
    msg.uri = req[2];
  }
  const length = headers.has("content-length") ? Number(headers.get("content-length")[0]) : null;
  if (length !== null && Number.isFinite(length)) {
    body = new TextDecoder().decode(new TextEncoder().encode(body).slice(0, length));
  }
  msg.body = body;
  msg.get = (name) => (headers.get(name) || [])[0];
  msg.all = (name) => headers.get(name) || [];
  return msg;
}

function buildMessage(startLine, headers, body = "") {
  const out = [startLine];
  for (const [name, value] of headers) out.push(`${name}: ${value}`);
  out.push(`Content-Length: ${new TextEncoder().encode(body).length}`);
  return out.join(CRLF) + CRLF + CRLF + body;
}

function tagOf(value) {
  const m = /;\s*tag=([^;>\s]+)/i.exec(value || "");
  return m ? m[1] : null;
}

function uriOf(nameAddr) {
  const m = /<([^>]+)>/.exec(nameAddr || "");
  return m ? m[1] : (nameAddr || "").split(";")[0].trim();
}

function cseqOf(msg) {
  const [num, method] = (msg.get("cseq") || "").split(/\s+/);
  return { num: Number(num), method };
}

// ------------------------------------------------------------------ digest (RFC 8760)

async function sha256hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function parseChallenge(value) {
  const out = {};
  const re = /(\w+)=(?:"([^"]*)"|([^,\s]+))/g;
  let m;
  while ((m = re.exec(value.replace(/^Digest\s+/i, "")))) out[m[1].toLowerCase()] = m[2] ?? m[3];
  return out;
}

async function authorization(challenges, method, uri, user, password) {
  // The switch sends one challenge per algorithm, strongest first (RFC 8760 §2.4).
  const usable = challenges.map(parseChallenge)
    .find((c) => (c.algorithm || "MD5").toUpperCase() === "SHA-256");
  if (!usable) throw new Error("no SHA-256 digest challenge");
  const cnonce = rand(16);
  const nc = "00000001";
  const ha1 = await sha256hex(`${user}:${usable.realm}:${password}`);
  const ha2 = await sha256hex(`${method}:${uri}`);
  const qop = (usable.qop || "").split(",").map((s) => s.trim()).includes("auth") ? "auth" : null;
  const response = qop
    ? await sha256hex(`${ha1}:${usable.nonce}:${nc}:${cnonce}:${qop}:${ha2}`)
    : await sha256hex(`${ha1}:${usable.nonce}:${ha2}`);
  let value = `Digest username="${user}", realm="${usable.realm}", nonce="${usable.nonce}", ` +
    `uri="${uri}", response="${response}", algorithm=SHA-256`;
  if (qop) value += `, qop=${qop}, nc=${nc}, cnonce="${cnonce}"`;
  if (usable.opaque) value += `, opaque="${usable.opaque}"`;
  return value;
}

// ------------------------------------------------------------------ the user agent

class Phone {
  constructor() {
    this.state = "idle";
    this.ws = null;
    this.call = null;
    this.host = location.hostname || "localhost";
    this.viaHost = `${rand(12)}.invalid`;
    this.secure = location.protocol === "https:";
    this.events = [];
    this.listeners = new Set();
    this.failure = null; // {cause, text, status, rule} of the last failed call
    this.warning = null; // {cause, text} while no audio leaves the browser
  }

  emit(state, detail = "") {
    this.state = state;
    this.events.push({ state, detail, at: Date.now() });
    for (const fn of this.listeners) fn(state, detail);
  }

  token() {
    return $("token").value || params.get("token") || null;
  }

  wsUrl() {
    const token = this.token();
    const base = `${this.secure ? "wss" : "ws"}://${location.host}/sip`;
    return token ? `${base}?token=${encodeURIComponent(token)}` : base;
  }

  connect() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return this.wsReady;
    const token = this.token();
    this.ws = new WebSocket(this.wsUrl(), "sip");
    let opened = false;
    this.wsReady = new Promise((resolve, reject) => {
      this.ws.onopen = () => { opened = true; badge("online"); resolve(); };
      this.ws.onerror = () => {
        badge("error");
        if (!opened) whyRefused(token).then(reject);
      };
    });
    this.ws.onclose = (ev) => {
      badge(ev.code === 1000 ? "offline" : "error");
      if (this.call) {
        this.failure = { cause: "connection_closed", status: null, rule: null,
                         text: `the connection to the switch closed (${ev.code} ${ev.reason})` };
        this.finish("failed", this.failure.text);
      }
      this.ws = null;
    };
    this.ws.onmessage = (ev) => this.receive(ev.data);
    return this.wsReady;
  }

  send(text) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error("not connected");
    this.ws.send(text);
  }

  receive(data) {
    if (typeof data !== "string") return;
    if (!data.trim()) return; // keep-alive pong
    let msg;
    try {
      msg = parseMessage(data);
    } catch (err) {
      console.warn("dropped a message that is not SIP", err);
      return;
    }
    if (msg.status !== undefined) this.onResponse(msg).catch((e) => this.fail(e));
    else this.onRequest(msg).catch((e) => this.fail(e));
  }

  fail(err) {
    console.error(err);
    if (this.call) this.finish("failed", String(err.message || err));
  }

  // ----------------------------------------------------------------- outgoing call

  async dial(number) {
    if (this.call) throw new Error("already in a call");
    const clean = String(number).replace(/[^0-9+*#]/g, "");
    if (!clean) throw new Error("no number");
    this.failure = null;
    this.emit("starting", clean);
    await this.connect();
    if (!navigator.mediaDevices) {
      throw new PhoneError("no_microphone", "this page has no microphone access over plain " +
                           "http: open it over https (DCE_TLS_CERT) or on localhost");
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (err) {
      throw micError(err);
    }
    const pc = new RTCPeerConnection({ iceServers: [] });
    const track = stream.getAudioTracks()[0];
    const sender = pc.addTrack(track, stream);
    preferG711(pc);
    const remote = new MediaStream();
    pc.ontrack = (ev) => {
      remote.addTrack(ev.track);
      $("remote").srcObject = remote;
      meter($("line"), remote, () => this.call !== null && this.call.pc === pc);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" && this.call) this.hangup("media failed");
    };
    const uri = `sip:${encodeURIComponent(clean).replace(/%2B/g, "+")}@${this.host}`;
    this.call = {
      pc, stream, sender, track, uri, remote,
      callId: `${rand(20)}`,
      fromTag: rand(10),
      toTag: null,
      cseq: 1,
      branch: null,
      remoteTarget: uri,
      routeSet: [],
      established: false,
      answered: false,
      cancelled: false,
      cancelSent: false,
      provisional: false,
      startedAt: null,
      user: $("user").value || params.get("user") || "webrtc",
      password: $("password").value || params.get("password") || "",
      authTried: false,
      micPeak: 0, // the loudest microphone level since the audio watch last looked
      watch: null,
    };
    const call = this.call;
    meter($("mic"), stream, () => this.call === call,
          (rms) => { call.micPeak = Math.max(call.micPeak, rms); });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    this.call.offer = pc.localDescription.sdp;
    this.sendInvite();
    this.emit("calling", clean);
  }

  requestHeaders(method, cseq, branch, extra = []) {
    const c = this.call;
    const via = `SIP/2.0/${this.secure ? "WSS" : "WS"} ${this.viaHost};branch=${branch};rport`;
    const to = c.toTag ? `<${c.uri}>;tag=${c.toTag}` : `<${c.uri}>`;
    const headers = [
      ["Via", via],
      ["Max-Forwards", "70"],
      ["From", `<sip:${c.user}@${this.host}>;tag=${c.fromTag}`],
      ["To", to],
      ["Call-ID", c.callId],
      ["CSeq", `${cseq} ${method}`],
    ];
    for (const r of c.routeSet) headers.push(["Route", r]);
    return headers.concat(extra);
  }

  contact() {
    return `<sip:${this.call.user}@${this.viaHost};transport=ws;ob>`;
  }

  sendInvite(auth = null) {
    const c = this.call;
    c.branch = `z9hG4bK${rand(16)}`;
    const extra = [
      ["Contact", this.contact()],
      ["Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"],
      ["Supported", "outbound"],
      ["User-Agent", "DCE phone"],
      ["Content-Type", "application/sdp"],
    ];
    if (auth) extra.push(auth);
    const headers = this.requestHeaders("INVITE", c.cseq, c.branch, extra);
    this.send(buildMessage(`INVITE ${c.uri} SIP/2.0`, headers, c.offer));
  }

  sendAck(response) {
    const c = this.call;
    const { num } = cseqOf(response);
    if (response.status >= 200 && response.status < 300) {
      // RFC 3261 §13.2.2.4: the ACK for a 2xx is its own transaction, to the remote target.
      const headers = this.requestHeaders("ACK", num, `z9hG4bK${rand(16)}`, [["Contact", this.contact()]]);
      this.send(buildMessage(`ACK ${c.remoteTarget} SIP/2.0`, headers));
    } else {
      // RFC 3261 §17.1.1.3: same branch as the INVITE, To from the response.
      const headers = this.requestHeaders("ACK", num, c.branch).map(([n, v]) =>
        n === "To" ? [n, response.get("to")] : [n, v]);
      this.send(buildMessage(`ACK ${c.uri} SIP/2.0`, headers));
    }
  }

  async onResponse(msg) {
    const c = this.call;
    if (!c || msg.get("call-id") !== c.callId) return;
    const { method, num } = cseqOf(msg);
    if (method !== "INVITE") return; // BYE/CANCEL/INFO responses need nothing more
    if (num !== c.cseq) return; // a stale response to the challenged INVITE
    if (msg.status < 200) {
      c.provisional = true;
      if (c.cancelled && !c.cancelSent) this.sendCancel();
      if (msg.status === 100 || c.cancelled) return;
      if (tagOf(msg.get("to"))) c.toTag = c.toTag || tagOf(msg.get("to"));
      if (msg.body && !c.answered) await this.applyAnswer(msg.body);
      this.emit("ringing", `${msg.status} ${msg.reason}`);
      return;
    }
    if (msg.status >= 200 && msg.status < 300) {
      c.toTag = tagOf(msg.get("to"));
      const contact = msg.get("contact");
      if (contact) c.remoteTarget = uriOf(contact);
      c.routeSet = msg.all("record-route").slice().reverse();
      if (msg.body && !c.answered) await this.applyAnswer(msg.body);
      this.sendAck(msg);
      if (c.cancelled) {
        this.sendBye();
        this.finish("ended", "cancelled");
        return;
      }
      c.established = true;
      c.startedAt = Date.now();
      $("mute").disabled = false;
      this.emit("connected", `${msg.status} ${msg.reason}`);
      this.watchAudio(c);
      return;
    }
    this.sendAck(msg);
    if ((msg.status === 401 || msg.status === 407) && !c.authTried && c.password) {
      c.authTried = true;
      c.toTag = null;
      const name = msg.status === 401 ? "www-authenticate" : "proxy-authenticate";
      const header = msg.status === 401 ? "Authorization" : "Proxy-Authorization";
      const value = await authorization(msg.all(name), "INVITE", c.uri, c.user, c.password);
      c.cseq += 1;
      this.sendInvite([header, value]);
      return;
    }
    if (msg.status === 487) {
      this.finish("ended", `${msg.status} ${msg.reason}`);
      return;
    }
    this.failure = explain(msg.status, msg.reason, msg.get("reason"));
    this.finish("failed", this.failure.text);
  }

  // While the call is up: is audio leaving the browser? Every 500 ms, the track's state, the
  // loudest microphone level since the last look, and the packets sent.
  watchAudio(c) {
    let silentSince = null;
    let stalledSince = null;
    let lastSent = null;
    c.watch = setInterval(async () => {
      if (this.call !== c) { clearInterval(c.watch); return; }
      const now = Date.now();
      let warn = null;
      if (c.track.readyState === "ended") {
        warn = ["microphone_ended", "the microphone stopped (unplugged?): the other side hears nothing"];
      } else if (!c.track.enabled) {
        warn = ["muted", "you are muted: the other side hears nothing"];
      } else if (c.track.muted) {
        warn = ["microphone_muted", "the microphone sends no audio (muted by the system or another program)"];
      } else {
        const peak = c.micPeak;
        c.micPeak = 0;
        silentSince = peak < SILENCE ? (silentSince ?? now) : null;
        if (silentSince !== null && now - silentSince >= SILENT_MS) {
          warn = ["silent", "no sound from your microphone: is it muted or unplugged?"];
        }
      }
      const sent = await packetsSent(c.pc);
      if (this.call !== c) return;
      if (sent !== null) {
        stalledSince = lastSent !== null && sent <= lastSent ? (stalledSince ?? now) : null;
        lastSent = sent;
        if (!warn && stalledSince !== null && now - stalledSince >= SILENT_MS) {
          warn = ["not_sending", "no audio is being sent to the switch"];
        }
      }
      this.setWarning(warn);
    }, 500);
  }

  setWarning(warn) {
    const next = warn ? { cause: warn[0], text: warn[1] } : null;
    if ((next && next.cause) === (this.warning && this.warning.cause)) return;
    this.warning = next;
    const el = $("warning");
    el.hidden = !next;
    el.textContent = next ? next.text : "";
    el.dataset.cause = next ? next.cause : "";
  }

  async applyAnswer(sdp) {
    await this.call.pc.setRemoteDescription({ type: "answer", sdp });
    this.call.answered = true;
  }

  async onRequest(msg) {
    const c = this.call;
    const sameCall = c && msg.get("call-id") === c.callId;
    if (msg.method === "ACK") return;
    if (msg.method === "OPTIONS") return this.respond(msg, 200, "OK");
    if (!sameCall) return this.respond(msg, 481, "Call/Transaction Does Not Exist");
    if (msg.method === "BYE") {
      this.respond(msg, 200, "OK");
      const reason = msg.get("reason");
      this.finish("ended", reason ? `far end hung up (${reason})` : "far end hung up");
      return;
    }
    if (msg.method === "INVITE") {
      // A re-INVITE (hold, a new address): answer it from the same peer connection.
      if (!msg.body) return this.respond(msg, 488, "Not Acceptable Here");
      await c.pc.setRemoteDescription({ type: "offer", sdp: msg.body });
      await c.pc.setLocalDescription(await c.pc.createAnswer());
      return this.respond(msg, 200, "OK", c.pc.localDescription.sdp,
                          [["Contact", this.contact()], ["Content-Type", "application/sdp"]]);
    }
    if (msg.method === "INFO" || msg.method === "UPDATE" || msg.method === "NOTIFY") {
      return this.respond(msg, 200, "OK");
    }
    return this.respond(msg, 405, "Method Not Allowed", "", [["Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"]]);
  }

  respond(req, status, reason, body = "", extra = []) {
    const headers = [];
    for (const v of req.all("via")) headers.push(["Via", v]);
    headers.push(["From", req.get("from")]);
    let to = req.get("to");
    if (!tagOf(to)) to += `;tag=${this.call ? this.call.fromTag : rand(10)}`;
    headers.push(["To", to], ["Call-ID", req.get("call-id")], ["CSeq", req.get("cseq")]);
    this.send(buildMessage(`SIP/2.0 ${status} ${reason}`, headers.concat(extra), body));
  }

  sendBye() {
    const c = this.call;
    c.cseq += 1;
    const headers = this.requestHeaders("BYE", c.cseq, `z9hG4bK${rand(16)}`);
    this.send(buildMessage(`BYE ${c.remoteTarget} SIP/2.0`, headers));
  }

  sendCancel() {
    const c = this.call;
    c.cancelSent = true;
    // RFC 3261 §9.1: same Request-URI, Call-ID, From, CSeq number and branch as the INVITE.
    const headers = this.requestHeaders("CANCEL", c.cseq, c.branch).map(([n, v]) =>
      n === "To" ? [n, `<${c.uri}>`] : [n, v]);
    this.send(buildMessage(`CANCEL ${c.uri} SIP/2.0`, headers));
  }

  hangup(why = "hung up") {
    const c = this.call;
    if (!c) return;
    if (c.established) {
      try { this.sendBye(); } catch (err) { console.warn(err); }
      this.finish("ended", why);
      return;
    }
    c.cancelled = true;
    this.emit("cancelling", why);
    // §9.1: a CANCEL only after a provisional response; otherwise it waits for one.
    if (c.provisional && !c.cancelSent) this.sendCancel();
  }

  finish(state, detail) {
    const c = this.call;
    this.call = null;
    this.setWarning(null);
    if (c) {
      clearInterval(c.watch);
      c.stream.getTracks().forEach((t) => t.stop());
      c.pc.close();
      this.lastCall = c;
    }
    $("mute").disabled = true;
    $("mute").setAttribute("aria-pressed", "false");
    this.emit(state, detail);
  }

  toggleMute() {
    const c = this.call;
    if (!c) return false;
    c.track.enabled = !c.track.enabled;
    $("mute").setAttribute("aria-pressed", String(!c.track.enabled));
    return !c.track.enabled;
  }

  dtmf(digit) {
    const c = this.call;
    if (!c || !c.established || !/^[0-9*#A-D]$/i.test(digit)) return false;
    const dtmf = c.sender.dtmf;
    if (dtmf && dtmf.canInsertDTMF) {
      dtmf.insertDTMF(digit, 120, 70); // RFC 4733 events in the media stream
      return "rfc4733";
    }
    c.cseq += 1;
    const headers = this.requestHeaders("INFO", c.cseq, `z9hG4bK${rand(16)}`,
                                        [["Content-Type", "application/dtmf-relay"]]);
    this.send(buildMessage(`INFO ${c.remoteTarget} SIP/2.0`, headers,
                           `Signal=${digit}${CRLF}Duration=160${CRLF}`));
    return "info";
  }

  async stats() {
    const c = this.call || this.lastCall;
    if (!c) return null;
    const out = { inbound: null, outbound: null, codec: null };
    const report = await c.pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.inbound = { packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
                        bytesReceived: s.bytesReceived, jitter: s.jitter };
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        out.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
      } else if (s.type === "codec") {
        out.codec = s.mimeType;
      }
    });
    return out;
  }
}

// ------------------------------------------------------------------ WebRTC helpers

function preferG711(pc) {
  // The switch bridges G.711 without transcoding: put PCMU/PCMA first (RFC 8829 §4.2.8).
  const caps = RTCRtpSender.getCapabilities && RTCRtpSender.getCapabilities("audio");
  const tr = pc.getTransceivers()[0];
  if (!caps || !tr || !tr.setCodecPreferences) return;
  const rank = (c) => (c.mimeType === "audio/PCMU" ? 0 : c.mimeType === "audio/PCMA" ? 1 :
    c.mimeType === "audio/telephone-event" ? 2 : 3);
  tr.setCodecPreferences(caps.codecs.slice().sort((a, b) => rank(a) - rank(b)));
}

function gathered(pc, timeoutMs = 3000) {
  // SIP has no trickle here: the INVITE carries every candidate (RFC 8838 is not used).
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

let audioContext = null;

async function packetsSent(pc) {
  // Audio RTP packets sent so far (null when the stats do not say).
  try {
    let sent = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "audio") sent = s.packetsSent;
    });
    return sent;
  } catch (err) {
    return null;
  }
}

function meter(element, stream, live, onLevel = null) {
  // A live level: RMS of the last 2048 samples, on a log-ish scale, while the call lasts.
  try {
    audioContext = audioContext || new AudioContext();
    const source = audioContext.createMediaStreamSource(stream);
    const analyser = audioContext.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (!live()) {
        element.value = 0;
        source.disconnect();
        return;
      }
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      const rms = Math.sqrt(sum / buf.length);
      element.value = Math.min(1, Math.sqrt(rms) * 1.5);
      element.dataset.rms = rms.toFixed(5);
      element.dataset.peak = Math.max(Number(element.dataset.peak || 0), rms).toFixed(5);
      if (onLevel) onLevel(rms);
      setTimeout(tick, 50); // rAF does not run in background tabs
    };
    if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
    tick();
  } catch (err) {
    console.warn("no level meter", err);
  }
}

// ------------------------------------------------------------------ page wiring

function badge(state) {
  const el = $("ws");
  el.textContent = state;
  el.className = `badge ${state}`;
}

const phone = new Phone();
window.dcePhone = {
  call: (number) => phone.dial(number).catch((err) => { dialFailed(err); throw err; }),
  hangup: () => phone.hangup(),
  dtmf: (digit) => phone.dtmf(digit),
  mute: () => phone.toggleMute(),
  stats: () => phone.stats(),
  get state() { return phone.state; },
  get failure() { return phone.failure; },
  get warning() { return phone.warning; },
  get events() { return phone.events.slice(); },
};

let ticker = null;
phone.listeners.add((state, detail) => {
  const el = $("state");
  el.textContent = state;
  el.dataset.state = state;
  $("detail").textContent = detail;
  $("detail").dataset.cause = state === "failed" && phone.failure ? phone.failure.cause : "";
  const busy = ["starting", "calling", "ringing", "connected", "cancelling"].includes(state);
  $("call").disabled = busy;
  $("hangup").disabled = !busy;
  clearInterval(ticker);
  if (state === "connected") {
    const t0 = Date.now();
    ticker = setInterval(() => {
      const s = Math.floor((Date.now() - t0) / 1000);
      $("timer").textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
    }, 500);
  }
});

// A call that failed before any SIP answer (token, microphone, a dropped socket).
function dialFailed(err) {
  if (phone.call) {
    const c = phone.call;
    c.stream && c.stream.getTracks().forEach((t) => t.stop());
    c.pc && c.pc.close();
  }
  phone.call = null;
  phone.failure = { cause: err.cause || "error", text: String(err.message || err),
                    status: null, rule: null };
  phone.emit("failed", phone.failure.text);
}

$("dial").addEventListener("submit", (ev) => {
  ev.preventDefault();
  phone.dial($("number").value).catch(dialFailed);
});
$("hangup").addEventListener("click", () => phone.hangup());
$("mute").addEventListener("click", () => phone.toggleMute());
$("keypad").addEventListener("click", (ev) => {
  const key = ev.target.dataset && ev.target.dataset.key;
  if (!key) return;
  if (!phone.dtmf(key)) $("number").value += key;
});

for (const id of ["token", "user", "password", "number"]) {
  if (params.get(id)) $(id).value = params.get(id);
}
if (params.get("autodial") === "1" && params.get("number")) {
  phone.dial(params.get("number")).catch(dialFailed);
}
