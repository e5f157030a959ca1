// The ask page: stream the answer as it is written (server-sent events over a POST), then swap in the
// server-rendered, sanitized answer. Without JavaScript the form posts and the page shows the full answer.
(function () {
  "use strict";
  const form = document.getElementById("ask-form");
  if (!form || !window.fetch || !window.ReadableStream || !window.TextDecoder) return;
  const textarea = form.querySelector("textarea[name=question]");
  const conversationInput = form.querySelector("input[name=conversation_id]");
  const status = form.querySelector(".ask-status");
  const submit = form.querySelector("button[type=submit]");
  const exchanges = document.getElementById("exchanges");
  const panel = document.getElementById("source-panel");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;

  // The length limit, counted as the server counts it (kb/answers/services.py: the question as recorded, spaces
  // and line breaks run together, in characters rather than UTF-16 units). The box has no maxlength, which
  // would cut a pasted question silently: the counter and the message say what to shorten instead.
  const maxChars = Number(textarea.dataset.maxChars);
  const count = document.getElementById("question-count");
  const lengthError = document.getElementById("question-error");
  const grouped = new Intl.NumberFormat("en-US");

  function questionLength() {
    const recorded = textarea.value.replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, " ").replace(/\s+/g, " ").trim();
    return Array.from(recorded).length;
  }

  function sayTooLong(length) {
    lengthError.textContent = textarea.dataset.tooLong.replace("{length}", grouped.format(length));
    lengthError.hidden = false;
    textarea.setAttribute("aria-invalid", "true");
  }

  // Live: the count on every change; the message when the question goes over the limit (announced once, not
  // at every key) and again on an attempt to send it.
  function showLength() {
    const length = questionLength();
    const over = length > maxChars;
    count.textContent = grouped.format(length) + " of " + grouped.format(maxChars) + " characters";
    count.classList.toggle("error", over);
    if (over && lengthError.hidden) sayTooLong(length);
    if (!over && textarea.getAttribute("aria-invalid") === "true") {
      lengthError.hidden = true;
      lengthError.textContent = "";
      textarea.removeAttribute("aria-invalid");
    }
  }
  textarea.addEventListener("input", showLength);
  showLength();

  textarea.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function urlFor(template, id) {
    return template.replace(/\/0\/(?=[^/]*$)/, "/" + id + "/");
  }

  async function swapInRendered(block, exchangeId) {
    const response = await fetch(urlFor(form.dataset.exchangeUrl, exchangeId), { headers: { "HX-Request": "true" } });
    if (!response.ok) return;
    const html = await response.text(); // server-rendered and sanitized (kb/answers/rendering.py)
    if (window.htmx) {
      // The answer in place of the streamed text and, out of band, the conversation's heading, the sidebar and
      // the question box's label: the first answer of a new conversation names it without a reload.
      window.htmx.swap(block, html, { swapStyle: "outerHTML" });
    } else {
      const holder = document.createElement("div");
      holder.innerHTML = html;
      block.replaceWith(holder.querySelector("article.exchange"));
    }
    const rendered = document.getElementById("exchange-" + exchangeId);
    const heading = rendered && rendered.querySelector(".question");
    if (heading) heading.focus({ preventScroll: true });
  }

  // Sources are numbered for the reader in order of first use ([1] [2] [3]), as the finished answer will be
  // (kb/answers/citations.py): the streamed text shows the same numbers, not the model's passage numbers.
  function numberedForTheReader(text) {
    const shown = new Map();
    return text.replace(/\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\]/g, function (marker, list) {
      return list.split(/\s*[,;]\s*/).map(function (n) {
        const passage = Number(n);
        if (!shown.has(passage)) shown.set(passage, shown.size + 1);
        return "[" + shown.get(passage) + "]";
      }).join("");
    });
  }

  form.addEventListener("submit", async function (event) {
    const question = textarea.value.trim();
    if (!question) return; // the browser's own validation says what to do
    event.preventDefault();
    const length = questionLength();
    if (length > maxChars) {
      sayTooLong(length); // nothing is sent, and nothing of the question is lost
      textarea.focus();
      return;
    }
    submit.disabled = true;
    status.textContent = "Searching the documents…";
    const block = element("article", "exchange outcome-pending");
    block.setAttribute("aria-busy", "true");
    block.appendChild(element("h2", "question", question));
    const notices = element("ul", "notices");
    notices.hidden = true;
    block.appendChild(notices);
    const answer = element("div", "answer streaming");
    answer.setAttribute("aria-live", "polite");
    block.appendChild(answer);
    exchanges.appendChild(block);
    block.scrollIntoView({ block: "nearest" });
    let text = "";
    let exchangeId = null;
    try {
      const body = { question: question, stream: true };
      if (conversationInput.value) body.conversation_id = Number(conversationInput.value);
      const response = await fetch(form.dataset.api, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "text/event-stream" },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        let detail = "The question could not be asked (" + response.status + ").";
        try { detail = (await response.json()).detail || detail; } catch (ignored) { /* not JSON */ }
        throw new Error(typeof detail === "string" ? detail : "Check the question and try again.");
      }
      textarea.value = "";
      showLength();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const raw = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = (raw.match(/^event: (.*)$/m) || [])[1];
          const data = JSON.parse((raw.match(/^data: (.*)$/m) || [])[1] || "{}");
          if (kind === "start") {
            exchangeId = data.exchange_id;
            block.id = "exchange-" + exchangeId;
            if (String(conversationInput.value) !== String(data.conversation_id)) {
              conversationInput.value = data.conversation_id;
              history.replaceState(null, "", urlFor(form.dataset.conversationUrl, data.conversation_id));
            }
            status.textContent = "Writing the answer…";
          } else if (kind === "error") {
            throw new Error(data.message); // nothing was started (the database is unavailable, say)
          } else if (kind === "delta") {
            text += data.text;
            answer.textContent = numberedForTheReader(text); // plain text while streaming; the sanitized HTML replaces it
          } else if (kind === "reset" || kind === "notice") {
            if (kind === "reset") { text = ""; answer.textContent = ""; }
            notices.hidden = false;
            notices.appendChild(element("li", "", data.notice || data.text));
          }
        }
      }
      status.textContent = "";
      if (exchangeId !== null) await swapInRendered(block, exchangeId);
    } catch (error) {
      if (exchangeId === null && !textarea.value) { textarea.value = question; showLength(); } // nothing was asked: keep it
      block.removeAttribute("aria-busy");
      answer.classList.remove("streaming");
      const message = element("p", "error", error.message || "The answer was interrupted. Try again.");
      message.setAttribute("role", "alert");
      block.appendChild(message);
      status.textContent = "";
    } finally {
      submit.disabled = false;
      if (!exchangeId) textarea.focus();
    }
  });

  // Citations open their passage in the side panel; without JavaScript the link opens the document there.
  async function openPanel(link) {
    const response = await fetch(link.dataset.panel, { headers: { "HX-Request": "true" } });
    panel.innerHTML = await response.text(); // server-rendered, escaped
    panel.hidden = false;
    panel.dataset.opener = link.id || "";
    panel.focus();
    const close = panel.querySelector(".panel-close");
    if (close) close.addEventListener("click", function () { closePanel(link); });
  }

  function closePanel(opener) {
    panel.hidden = true;
    panel.innerHTML = "";
    if (opener) opener.focus();
  }

  document.addEventListener("click", function (event) {
    const link = event.target.closest("a.cite, a.cite-source");
    if (link && link.dataset.panel) {
      event.preventDefault();
      openPanel(link);
      return;
    }
    const down = event.target.closest("button.rate-down");
    if (down) {
      const why = document.getElementById(down.getAttribute("aria-controls"));
      why.hidden = !why.hidden;
      down.setAttribute("aria-expanded", String(!why.hidden));
      if (!why.hidden) why.querySelector("select").focus();
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !panel.hidden) closePanel(null);
  });
})();
