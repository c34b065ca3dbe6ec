// Koto status page: refresh the live values from /api/live every few seconds. Without this script the page
// reloads itself (a <noscript> meta refresh), so everything here is an improvement, never a requirement.
(function () {
  "use strict";
  var EVERY_MS = 2000;
  function set(sel, text) {
    document.querySelectorAll(sel).forEach(function (el) { if (el.textContent !== text) el.textContent = text; });
  }
  function health(list) {
    var ul = document.querySelector('[data-live="health"]');
    if (!ul) return;
    var html = list.map(function (h) { return h.level + "\u0000" + h.text; }).join("\u0001");
    if (ul.getAttribute("data-last") === html) return;
    ul.setAttribute("data-last", html);
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    list.forEach(function (h) {
      var li = document.createElement("li");
      li.className = h.level;
      li.textContent = h.text;
      ul.appendChild(li);
    });
  }
  function tick() {
    fetch("/api/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) return;
        // An appliance added or removed, or locked or unlocked, changes the page's layout: load it anew.
        var shown = Array.prototype.map.call(document.querySelectorAll("section.appliance"), function (s) {
          return s.id.slice(4) + (s.querySelector(".lock") ? "!" : "");
        }).sort().join(",");
        var now = Object.keys(d.appliances).map(function (aid) {
          return aid + (d.appliances[aid].locked ? "!" : "");
        }).sort().join(",");
        if (shown !== now) { window.location.reload(); return; }
        Object.keys(d.appliances).forEach(function (aid) {
          var a = d.appliances[aid], q = '[data-appliance="' + CSS.escape(aid) + '"]';
          set('[data-live="function"]' + q, a["function"]);
          set('[data-live="power"]' + q, a.power);
        });
        health(d.health);
        if (d.cloud) set('[data-live="cloud"]', d.cloud);
        document.documentElement.setAttribute("data-updated", String(d.now));
      })
      .catch(function () { /* the gateway restarting: try again at the next tick */ })
      .then(function () { setTimeout(tick, EVERY_MS); });
  }
  setTimeout(tick, EVERY_MS);
})();
