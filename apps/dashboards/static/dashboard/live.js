// Keeps a dashboard page that covers today live: every few seconds it fetches the same URL and
// swaps in the new cards and tables (server-rendered, escaped HTML from this origin) and the new
// chart data (read from the json_script element as JSON, never as HTML).
(function () {
  "use strict";
  var every = parseInt(document.body.getAttribute("data-live"), 10) || 3000;
  var busy = false;

  function swap(fresh, selector) {
    var now = document.querySelectorAll(selector), next = fresh.querySelectorAll(selector);
    if (now.length !== next.length) { return; }
    for (var i = 0; i < now.length; i++) { now[i].replaceWith(document.importNode(next[i], true)); }
  }

  function redraw(fresh) {
    var data = fresh.getElementById("charts-data");
    if (!data) { return; }
    JSON.parse(data.textContent).forEach(function (cfg) {
      var canvas = document.querySelector('canvas[data-chart="' + cfg.name + '"]');
      if (!canvas || !canvas.chart) { return; }
      var chart = canvas.chart;
      if (chart.data.datasets.length !== cfg.datasets.length) { window.location.reload(); return; }
      chart.data.labels = cfg.labels;
      cfg.datasets.forEach(function (ds, i) {
        if (chart.data.datasets[i]) { chart.data.datasets[i].data = ds.data; chart.data.datasets[i].label = ds.label; }
      });
      chart.update("none");
    });
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        swap(fresh, "section.cards");
        swap(fresh, "section.table");
        redraw(fresh);
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }

  setInterval(tick, every);
})();
