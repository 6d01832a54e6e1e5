// pairq admin: keep the page live without a framework. Every 2 s the page's
// <main> is fetched again and swapped in, unless the page opted out
// (data-refresh="off") or the operator is in the middle of something (a box is
// ticked or a field has focus). Actions need no script: the server asks to confirm.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  function busy() {
    var a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA")) return true;
    return document.querySelector("input[type=checkbox]:checked") !== null;
  }
  function refresh() {
    if (document.body.dataset.refresh !== "on" || busy()) return;
    fetch(window.location.href, { headers: { "X-Requested-With": "refresh" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text || busy()) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("live");
        var live = document.getElementById("live");
        if (fresh && live) { live.innerHTML = fresh.innerHTML; document.body.dataset.refreshed = String(Date.now()); }
      })
      .catch(function () { /* the console itself is down: keep the last view */ });
  }
  window.setInterval(refresh, INTERVAL_MS);
})();
