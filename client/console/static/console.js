// Perdure console: live refresh, confirmation dialogs, relative times. Plain JavaScript.
"use strict";

function humanDuration(seconds) {
  const s = Math.abs(seconds);
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

// Relative times ("12 s ago", "in 3 min 20 s") stay current without a reload.
function tickTimes() {
  const now = Date.now() / 1000;
  document.querySelectorAll(".rel[data-epoch], .countdown[data-epoch]").forEach((el) => {
    const at = parseFloat(el.dataset.epoch);
    if (!at) return;
    const delta = at - now;
    el.textContent = delta > 0 ? "in " + humanDuration(delta) : humanDuration(delta) + " ago";
    if (el.classList.contains("countdown")) el.classList.toggle("error-text", delta <= 0);
  });
}

async function refresh(el) {
  const response = await fetch(el.dataset.refresh, { headers: { "Accept": "text/html" } });
  if (response.ok) {
    el.innerHTML = await response.text();
    tickTimes();
  }
}

// Lists (executions, activities, tokens, runtimes): every element marked data-poll is
// refreshed from the same page every 2 s while the tab is visible.
function pollLists() {
  const parts = document.querySelectorAll("[data-poll][id]");
  if (!parts.length) return;
  setInterval(async () => {
    if (document.visibilityState !== "visible") return;
    try {
      const response = await fetch(location.href, { headers: { "Accept": "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      parts.forEach((el) => {
        const replacement = fresh.getElementById(el.id);
        if (replacement) el.innerHTML = replacement.innerHTML;
      });
      tickTimes();
    } catch (error) { /* the server restarts: try again at the next tick */ }
  }, 2000);
}

// One execution: its index entry streams in (server-sent events); a new step or status
// reloads the summary and the timeline.
const TERMINAL = ["COMPLETED", "FAILED", "CANCELLED", "TERMINATED"];
function followExecution() {
  const head = document.querySelector("[data-execution]");
  if (!head || !window.EventSource) return;
  const badge = document.getElementById("status");
  const live = document.getElementById("live");
  let length = parseInt(head.dataset.length, 10);
  let status = badge.dataset.status;
  const source = new EventSource("/executions/" + encodeURIComponent(head.dataset.execution) + "/events");
  source.onmessage = (message) => {
    const d = JSON.parse(message.data);
    if (d.status !== status) {
      status = d.status;
      badge.textContent = status;
      badge.dataset.status = status;
      badge.className = "badge status-" + status.toLowerCase();
      document.getElementById("actions").hidden = TERMINAL.includes(status);
    }
    if (d.history_length !== length || TERMINAL.includes(status)) {
      length = d.history_length;
      refresh(live).catch(() => {});
    }
  };
}

// Actions open a confirmation dialog; "data-close" buttons dismiss it.
function wireDialogs() {
  document.querySelectorAll("[data-dialog]").forEach((button) => {
    button.addEventListener("click", () => document.getElementById(button.dataset.dialog).showModal());
  });
  document.querySelectorAll("dialog [data-close]").forEach((button) => {
    button.addEventListener("click", () => button.closest("dialog").close());
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireDialogs();
  pollLists();
  followExecution();
  tickTimes();
  setInterval(tickTimes, 1000);
});
