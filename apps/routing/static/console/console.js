// The staff inbox and a conversation page stay live: a websocket (/ws/console/) says what changed,
// and the page re-reads the list or the transcript over HTTP (server-rendered, escaped HTML from
// this origin; the server checks permissions on every read). Reconnects with backoff.
(function () {
  "use strict";
  var list = document.getElementById("inbox");
  var transcript = document.getElementById("transcript");
  var target = list || transcript;
  if (!target) { return; }
  var conversation = transcript ? transcript.getAttribute("data-conversation") : null;
  var delay = 500, reading = false, again = false;

  function scrollDown() { if (transcript) { window.scrollTo(0, document.body.scrollHeight); } }

  function reread() {
    if (reading) { again = true; return; }
    reading = true;
    fetch(target.getAttribute("data-refresh"), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (html) {
        target.innerHTML = html;
        document.body.setAttribute("data-refreshed", String(Date.now()));
        scrollDown();
      })
      .catch(function () { /* the next change or reconnect re-reads */ })
      .then(function () { reading = false; if (again) { again = false; reread(); } });
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + "/ws/console/");
    socket.onopen = function () {
      delay = 500;
      document.body.setAttribute("data-live-state", "open");
      reread();  // whatever changed while we were away
    };
    socket.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type !== "changed") { return; }
      if (list || frame.conversation_id === conversation) { reread(); }
    };
    socket.onclose = function (event) {
      document.body.setAttribute("data-live-state", "closed");
      if (event.code === 4403) { return; }  // not allowed: retrying would not help
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }

  scrollDown();
  connect();
})();
