// The live signals feed of /inbox: an EventSource on /signals/stream (the session's
// signals, the same stream as GET /api/v1/stream).  Every value from the stream is
// put in the page as text (textContent), never as HTML; links are built from ids only.
(function () {
  "use strict";
  var feed = document.getElementById("signal-feed");
  var status = document.getElementById("feed-status");
  if (!feed || !window.EventSource) return;
  var KINDS = ["received", "replied", "opened", "clicked", "bounced"];
  var MODULES = ["leads", "contacts", "accounts", "deals"];
  var MAX_ITEMS = 100;
  var lang = feed.getAttribute("data-lang") || "ja";
  var tz = feed.getAttribute("data-tz") || "UTC";

  function when(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    try {
      return d.toLocaleString(lang === "ja" ? "ja-JP" : "en-GB", { timeZone: tz });
    } catch (e) {
      return d.toISOString();
    }
  }

  function span(cls, text) {
    var el = document.createElement("span");
    el.className = cls;
    el.textContent = text == null ? "" : String(text);
    return el;
  }

  function link(cls, href, text) {
    var a = document.createElement("a");
    a.className = cls;
    a.href = href;
    a.textContent = text == null ? "" : String(text);
    return a;
  }

  function isId(v) {
    return typeof v === "number" && v > 0 && Math.floor(v) === v;
  }

  function show(kind, body) {
    var li = document.createElement("li");
    li.className = "signal signal-" + kind;
    li.setAttribute("data-kind", kind);
    li.appendChild(span("when muted", when(body.at)));
    li.appendChild(span("kind", feed.getAttribute("data-label-" + kind) || kind));
    var subject = body.subject || feed.getAttribute("data-empty");
    if (isId(body.message_id)) {
      li.appendChild(link("subject", "/emails/" + body.message_id, subject));
    } else {
      li.appendChild(span("subject", subject));
    }
    if (body.counterpart) li.appendChild(span("counterpart muted", body.counterpart));
    var rec = body.record;
    if (rec && MODULES.indexOf(rec.module) >= 0 && isId(rec.id)) {
      li.appendChild(link("record", "/records/" + rec.module + "/" + rec.id, rec.name || rec.module));
    }
    feed.insertBefore(li, feed.firstChild);
    while (feed.children.length > MAX_ITEMS) feed.removeChild(feed.lastChild);
  }

  var source = new EventSource("/signals/stream");
  source.onopen = function () {
    if (status) status.textContent = status.getAttribute("data-live");
  };
  source.onerror = function () {
    if (status) status.textContent = status.getAttribute("data-lost");
  };
  KINDS.forEach(function (kind) {
    source.addEventListener(kind, function (ev) {
      var body;
      try {
        body = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (body && typeof body === "object") show(kind, body);
    });
  });
})();
