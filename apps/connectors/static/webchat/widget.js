// The embeddable web chat widget. On another site:
//   <script src="https://gateway.example/static/webchat/widget.js" data-chat="web" async></script>
// It adds a launcher button and a chat panel inside a shadow root (the site's CSS does not leak in),
// talks to the gateway's /ws/chat/<slug>/ socket (frames: docs/channels/webchat.md), renders replies as Markdown
// sanitized by DOMPurify (also while they stream), shows a typing indicator, reconnects with
// backoff and keeps the conversation across page loads (localStorage of the embedding site).
// The gateway serves it only to the channel's listed origins.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.getAttribute("data-chat")) { return; }
  var slug = script.getAttribute("data-chat");
  var base = new URL(script.src, window.location.href).origin;
  var store = "agent-gateway:" + base + ":" + slug + ":";
  var ERRORS = {
    rate_limited: "You are sending messages too quickly. Please wait a moment and try again.",
    quota_exceeded: "This chat has reached its usage limit for now. Please try again later.",
    service_unavailable: "The assistant is unavailable right now. Please try again in a minute.",
    agent_failed: "The assistant could not answer this time. Please try again.",
    reply_timeout: "The assistant is taking too long. Please try again.",
    forbidden: "This chat is not available on this site.",
    ip_forbidden: "This chat is not available from your network.",
    channel_disabled: "This chat is closed at the moment.",
    unauthenticated: "Your chat session expired. Reload the page to start again.",
    payload_too_large: "That message is too long."
  };

  var host = document.createElement("div");
  host.setAttribute("data-agent-gateway-chat", slug);
  var root = host.attachShadow({ mode: "open" });
  root.innerHTML =
    "<style>" +
    ":host{all:initial}*{box-sizing:border-box;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif}" +
    ".launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;padding:0;" +
    "display:flex;align-items:center;justify-content:center;" +
    "background:#2f6fde;color:#fff;font-size:26px;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}" +
    ".panel{position:fixed;right:20px;bottom:88px;width:370px;height:560px;max-height:calc(100vh - 108px);" +
    "display:none;flex-direction:column;background:#fff;color:#1d2329;border-radius:12px;overflow:hidden;" +
    "box-shadow:0 8px 30px rgba(0,0,0,.25);z-index:2147483000}" +
    ".panel.open{display:flex}" +
    "header{background:#2f6fde;color:#fff;padding:12px 14px;font-weight:600;display:flex;justify-content:space-between}" +
    "header button{background:none;border:0;color:#fff;font-size:20px;cursor:pointer}" +
    ".log{flex:1;overflow-y:auto;padding:12px;background:#f6f7f9}" +
    ".msg{margin:6px 0;padding:8px 11px;border-radius:10px;max-width:85%;word-wrap:break-word;overflow-wrap:anywhere}" +
    ".msg.user{background:#2f6fde;color:#fff;margin-left:auto;white-space:pre-wrap}" +
    ".msg.bot{background:#fff;border:1px solid #e1e4e8}" +
    ".msg.bot p{margin:0 0 .5em}.msg.bot p:last-child{margin:0}.msg.bot ul,.msg.bot ol{margin:.3em 0;padding-left:1.3em}" +
    ".msg.bot pre{background:#f0f2f5;padding:8px;border-radius:6px;overflow-x:auto}.msg.bot code{font-family:ui-monospace,monospace;font-size:13px}" +
    ".msg.bot a{color:#2f6fde}" +
    ".notice{margin:8px 0;padding:8px 11px;border-radius:8px;background:#fdecea;color:#8a1c12;font-size:14px}" +
    ".typing{display:none;padding:0 14px 6px;color:#6a737d;font-size:13px;background:#f6f7f9}.typing.on{display:block}" +
    "form{display:flex;gap:6px;padding:10px;border-top:1px solid #e1e4e8;background:#fff}" +
    "textarea{flex:1;resize:none;border:1px solid #ccd1d7;border-radius:8px;padding:8px;height:42px}" +
    "form button{border:0;border-radius:8px;background:#2f6fde;color:#fff;padding:0 14px;cursor:pointer}" +
    "form button[disabled]{background:#9db7e8;cursor:default}" +
    ".state{font-size:12px;font-weight:400;opacity:.85}" +
    "@media (max-width:480px){.panel{right:0;bottom:0;width:100vw;height:100vh;max-height:100vh;border-radius:0}" +
    ".panel.open~.launcher{display:none}}" +
    "</style>" +
    "<div class='panel' role='dialog' aria-label='Chat'>" +
    "<header><span class='title'>Chat <span class='state'></span></span><button class='close' aria-label='Close'>×</button></header>" +
    "<div class='log' aria-live='polite'></div><div class='typing'>The assistant is typing…</div>" +
    "<form><textarea class='text' placeholder='Write a message…' aria-label='Message'></textarea>" +
    "<button class='send' type='submit' disabled>Send</button></form></div>" +
    "<button class='launcher' aria-label='Open chat'><svg viewBox='0 0 24 24' width='26' height='26' fill='#fff' " +
    "aria-hidden='true'><path d='M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z'/>" +
    "</svg></button>";
  var panel = root.querySelector(".panel"), log = root.querySelector(".log"), typing = root.querySelector(".typing");
  var text = root.querySelector(".text"), send = root.querySelector(".send"), state = root.querySelector(".state");
  var socket = null, delay = 1000, started = false, refused = false, counter = 0;
  var streams = {};  // reply_to → {el, text}
  var shown = {};    // message ids already on screen

  function get(key) { try { return window.localStorage.getItem(store + key); } catch (e) { return null; } }
  function put(key, value) {
    try { if (value) { window.localStorage.setItem(store + key, value); } else { window.localStorage.removeItem(store + key); } }
    catch (e) { /* storage blocked: the chat still works for this page */ }
  }

  function loadScript(path, global) {
    return new Promise(function (resolve) {
      if (window[global]) { resolve(); return; }
      var tag = document.createElement("script");
      tag.src = base + path;
      tag.onload = tag.onerror = function () { resolve(); };
      document.head.appendChild(tag);
    });
  }

  function markdown(source) {
    // No sanitizer, no HTML: the text is shown as text.
    if (!window.marked || !window.DOMPurify) { var d = document.createElement("div"); d.textContent = source; return d.innerHTML; }
    var html = window.marked.parse(source, { gfm: true, breaks: true });
    // Nothing that loads a resource on display (images, media, backgrounds): a reply must not
    // reach another address unless the visitor clicks a link.
    return window.DOMPurify.sanitize(html, {
      USE_PROFILES: { html: true },
      FORBID_TAGS: ["style", "form", "input", "img", "audio", "video", "source", "track", "picture"],
      FORBID_ATTR: ["style", "src", "srcset", "poster", "background"]
    });
  }

  function scroll() { log.scrollTop = log.scrollHeight; }

  function bubble(kind, id) {
    var el = document.createElement("div");
    el.className = "msg " + kind;
    if (id) { el.setAttribute("data-id", id); shown[id] = true; }
    log.appendChild(el);
    return el;
  }

  function showUser(message, id) { bubble("user", id).textContent = message; scroll(); }

  function showBot(message, id, replyTo) {
    var stream = replyTo && streams[replyTo];
    var el = stream ? stream.el : bubble("bot", id);
    if (stream) { delete streams[replyTo]; if (id) { el.setAttribute("data-id", id); shown[id] = true; } }
    el.innerHTML = markdown(message);
    links(el);
    scroll();
  }

  function links(el) {
    Array.prototype.forEach.call(el.querySelectorAll("a"), function (a) {
      a.setAttribute("target", "_blank");
      a.setAttribute("rel", "noopener noreferrer nofollow");
    });
  }

  function notice(message) {
    var el = document.createElement("div");
    el.className = "notice";
    el.setAttribute("role", "alert");
    el.textContent = message;
    log.appendChild(el);
    scroll();
  }

  function setTyping(on) { typing.className = on ? "typing on" : "typing"; }

  function setState(label, ready) { state.textContent = label ? "· " + label : ""; send.disabled = !ready; }

  function showTitle() {
    var title = get("title");
    if (title) { root.querySelector(".title").firstChild.textContent = title + " "; }
  }

  function session() {
    var token = get("visitor");
    if (token) { return Promise.resolve(token); }
    return fetch(base + "/chat/" + encodeURIComponent(slug) + "/widget-session", { credentials: "omit" })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (!r.ok || !body.visitor_token) {
            var error = new Error((body.error && body.error.message) || ERRORS.forbidden);
            error.final = r.status === 403 || r.status === 404;
            throw error;
          }
          put("title", body.title);
          showTitle();
          put("visitor", body.visitor_token);
          return body.visitor_token;
        });
      });
  }

  function connect() {
    setState("connecting", false);
    session().then(function (token) {
      var url = base.replace(/^http/, "ws") + "/ws/chat/" + encodeURIComponent(slug) + "/?visitor=" +
        encodeURIComponent(token);
      var conversation = get("conversation");
      if (conversation) { url += "&conversation=" + encodeURIComponent(conversation); }
      socket = new WebSocket(url);
      socket.onopen = function () { delay = 1000; setState("", true); };
      socket.onmessage = function (event) {
        var frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        handle(frame);
      };
      socket.onclose = function (event) {
        socket = null;
        setTyping(false);
        if (refused || event.code === 4403 || event.code === 4404) { setState("closed", false); return; }
        setState("reconnecting", false);
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, 30000);
      };
    }).catch(function (error) {
      if (error.final) { refused = true; setState("unavailable", false); notice(error.message); return; }
      setState("offline", false);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }

  function handle(frame) {
    if (frame.type === "history") {
      if (frame.conversation_id) { put("conversation", frame.conversation_id); }
      (frame.messages || []).forEach(function (m) {
        if (shown[m.message_id]) { return; }
        if (m.direction === "in") { showUser(m.message, m.message_id); } else { showBot(m.message, m.message_id); }
      });
    } else if (frame.type === "ack") {
      if (frame.conversation_id) { put("conversation", frame.conversation_id); }
      shown[frame.message_id] = true;
      setTyping(true);
    } else if (frame.type === "delta") {
      var s = streams[frame.reply_to] || (streams[frame.reply_to] = { el: bubble("bot"), text: "" });
      s.text += frame.delta || "";
      s.el.innerHTML = markdown(s.text);
      links(s.el);
      scroll();
    } else if (frame.type === "reset") {
      var dropped = streams[frame.reply_to];  // its pieces are void; the next attempt's start a new bubble
      if (dropped) { dropped.el.remove(); delete streams[frame.reply_to]; }
    } else if (frame.type === "reply") {
      setTyping(false);
      if (!shown[frame.message_id]) { showBot(frame.message || "", frame.message_id, frame.reply_to); }
    } else if (frame.type === "error") {
      setTyping(false);
      var message = ERRORS[frame.code] || frame.message || "Something went wrong.";
      if (frame.retry_after) { message += " (about " + Math.ceil(frame.retry_after) + " s)"; }
      if (frame.code === "unauthenticated") { put("visitor", null); put("conversation", null); }
      if (frame.code === "forbidden" || frame.code === "not_found") { refused = true; }
      notice(message);
    }
  }

  function open() {
    panel.className = "panel open";
    if (!started) {
      started = true;
      Promise.all([loadScript("/static/webchat/vendor/marked.min.js", "marked"),
                   loadScript("/static/webchat/vendor/purify.min.js", "DOMPurify")]).then(connect);
    }
    text.focus();
  }

  root.querySelector(".launcher").addEventListener("click", function () {
    if (panel.className.indexOf("open") >= 0) { panel.className = "panel"; } else { open(); }
  });
  root.querySelector(".close").addEventListener("click", function () { panel.className = "panel"; });
  root.querySelector("form").addEventListener("submit", function (event) {
    event.preventDefault();
    var message = text.value.trim();
    if (!message || !socket || socket.readyState !== 1) { return; }
    counter += 1;
    var clientId = "w-" + Date.now().toString(36) + "-" + counter;
    socket.send(JSON.stringify({ type: "message", message: message, client_id: clientId }));
    showUser(message);
    text.value = "";
  });
  text.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); root.querySelector("form").requestSubmit(); }
  });

  function mount() { document.body.appendChild(host); showTitle(); if (get("open") === "1") { open(); } }
  if (document.body) { mount(); } else { document.addEventListener("DOMContentLoaded", mount); }
  window.addEventListener("pagehide", function () { put("open", panel.className.indexOf("open") >= 0 ? "1" : null); });
})();
