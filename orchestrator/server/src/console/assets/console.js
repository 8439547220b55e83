// Sagaflow console: live refresh, and nothing else. Every page works without
// it (forms and links); with it, a region marked data-live-url is fetched
// again every data-live-every ms and swapped in when the server says it
// changed (HTTP 200; 204 means unchanged). The swapped region keeps the
// <details> the reader had open, and its own data-live-url (or its absence,
// once a workflow has ended) decides whether polling goes on.
"use strict";
(function () {
  function toggleOn() {
    var toggle = document.getElementById("live-toggle");
    return !toggle || toggle.checked;
  }

  function status(text) {
    var out = document.getElementById("live-status");
    if (out) { out.textContent = text; }
  }

  function schedule(region) {
    var every = parseInt(region.getAttribute("data-live-every") || "3000", 10);
    window.setTimeout(function () { poll(region.id); }, Math.max(every, 1000));
  }

  function poll(id) {
    var region = document.getElementById(id);
    if (!region) { return; }
    var url = region.getAttribute("data-live-url");
    if (!url) { return; }
    if (!toggleOn() || document.hidden) { schedule(region); return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 204) { schedule(region); return null; }
        if (response.status === 401) { status("Signed out: reload the page to sign in again."); return null; }
        if (!response.ok) { status("Refresh failed (" + response.status + "); retrying."); schedule(region); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null || html === undefined) { return; }
        var open = Array.prototype.map.call(region.querySelectorAll("details[open][id]"), function (d) { return d.id; });
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var fresh = holder.querySelector("#" + id);
        if (!fresh) { schedule(region); return; }
        open.forEach(function (detailsId) {
          var d = fresh.querySelector("#" + CSS.escape(detailsId));
          if (d) { d.open = true; }
        });
        region.replaceWith(fresh);
        status("Updated " + new Date().toLocaleTimeString());
        if (fresh.getAttribute("data-live-url")) { schedule(fresh); } else { status("Ended: no more updates."); }
      })
      .catch(function () { status("Refresh failed; retrying."); schedule(region); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-live-url][id]"), schedule);
  });
})();
