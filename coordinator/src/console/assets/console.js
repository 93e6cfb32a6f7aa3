// The console's only script: auto-refresh. Every few seconds, while the box is ticked and the
// tab is visible, it fetches this same page and swaps in the parts marked data-refresh (the
// live numbers, the counts, the rows; a transaction's details). Without it every page still
// works: reload to refresh.
(function () {
  "use strict";
  var box = document.getElementById("auto");
  if (!box) return;
  var busy = false;
  function tick() {
    if (!box.checked || busy || document.hidden) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-refresh]").forEach(function (el) {
          var fresh = el.id && doc.getElementById(el.id);
          if (fresh) el.replaceWith(document.importNode(fresh, true));
        });
        document.documentElement.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(tick, 2000);
})();
