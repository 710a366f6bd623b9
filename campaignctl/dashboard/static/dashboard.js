// Live overview: every data-every seconds, replace #overview's content with /overview/live.
// Plain JavaScript, no build step; the page works without it (reload by hand).
(function () {
  "use strict";
  var box = document.querySelector("[data-live]");
  if (!box) { return; }
  var every = Math.max(1, parseFloat(box.getAttribute("data-every")) || 3) * 1000;
  function refresh() {
    fetch(box.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { box.innerHTML = html; box.removeAttribute("data-stale"); })
      .catch(function () { box.setAttribute("data-stale", "1"); })
      .then(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
