// certvault web console: local times (UTC stays in the title), copy buttons, confirmations,
// vault picker auto-submit, live status polling. No framework; works without it too.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d.getTime())) {
        t.textContent = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
        t.title = t.getAttribute("datetime") + " (UTC)";
      }
    });
  }
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var el = document.getElementById(b.getAttribute("data-copy"));
        if (!el) return;
        var text = el.textContent;
        var done = function () { b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy"; }, 1500); };
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(text).then(done, function () {});
        }
      });
    });
  }
  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }
  function pickers(root) {
    root.querySelectorAll("select[data-autosubmit]").forEach(function (s) {
      s.addEventListener("change", function () { s.form.submit(); });
    });
  }
  function poll() {
    var el = document.querySelector("[data-poll]");
    if (!el) return;
    var url = el.getAttribute("data-poll");
    var tick = function () {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s) return;
          var st = document.getElementById("live-status");
          if (st) st.textContent = s.status;
          var reason = document.getElementById("live-reason");
          if (reason) reason.textContent = s.error || "";
          var changed = typeof s.details === "string" && s.details !== el.getAttribute("data-stage");
          if (changed || s.status === "completed" || s.status === "failed" || s.status === "cancelled") {
            window.location.reload();
          } else {
            setTimeout(tick, 2000);
          }
        }, function () { setTimeout(tick, 5000); });
    };
    setTimeout(tick, 2000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    copyButtons(document);
    confirmations(document);
    pickers(document);
    poll();
  });
})();
