// Draws the page's charts with the vendored Chart.js (no CDN: the gateway works offline).
(function () {
  "use strict";
  var configs = JSON.parse(document.getElementById("charts-data").textContent);
  var palette = ["#2f6fde", "#e0533d", "#2ca58d", "#f2a541", "#8a5cd1", "#5c6b7a", "#d1495b", "#66a182"];
  configs.forEach(function (cfg) {
    var canvas = document.querySelector('canvas[data-chart="' + cfg.name + '"]');
    if (!canvas || typeof Chart === "undefined") { return; }
    var datasets = cfg.datasets.map(function (ds, i) {
      var color = palette[i % palette.length];
      return { label: ds.label, data: ds.data, borderColor: color, backgroundColor: color + (cfg.kind === "line" ? "33" : "cc"),
               spanGaps: true, tension: 0.2, pointRadius: 2 };
    });
    canvas.chart = new Chart(canvas, {
      type: cfg.kind,
      data: { labels: cfg.labels, datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: { stacked: cfg.stacked }, y: { stacked: cfg.stacked, beginAtZero: true } },
        plugins: { legend: { display: datasets.length > 1 || cfg.kind === "line" } }
      }
    });
    canvas.setAttribute("data-drawn", "1");
  });
  document.body.setAttribute("data-charts-drawn", String(configs.length));
})();
