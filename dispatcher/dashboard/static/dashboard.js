// dispatcher dashboard: keeps the numbers on the page current by polling the JSON API (no libraries).
"use strict";
(function () {
  const numbers = new Intl.NumberFormat("ja-JP");
  const clock = new Intl.DateTimeFormat("ja-JP", {
    timeZone: "Asia/Tokyo", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
  const RUNNING_MS = 3000;
  const IDLE_MS = 15000;

  function jst(iso, seconds) {
    const parts = {};
    for (const p of clock.formatToParts(new Date(iso))) parts[p.type] = p.value;
    const time = `${parts.hour}:${parts.minute}` + (seconds ? `:${parts.second}` : "");
    return seconds ? `${time} JST` : `${parts.year}-${parts.month}-${parts.day} ${time} JST`;
  }

  function lookup(data, path) {
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), data);
  }

  // Writes one campaign's JSON into the elements of `root` that ask for it.
  function apply(root, data) {
    root.querySelectorAll("[data-bind]").forEach((el) => {
      const value = lookup(data, el.dataset.bind);
      const n = typeof value === "number" ? value : 0;
      el.textContent = numbers.format(n);
      const chip = el.closest("[data-zero-hide]");
      if (chip) chip.classList.toggle("zero", n === 0);
    });
    root.querySelectorAll("progress[data-progress]").forEach((el) => {
      el.max = Math.max(data.total, 1);
      el.value = data.progress.done;
    });
    root.querySelectorAll("[data-percent]").forEach((el) => {
      el.textContent = data.total ? `${((100 * data.progress.done) / data.total).toFixed(1)}%` : "—";
    });
    root.querySelectorAll("[data-state-label]").forEach((el) => {
      el.textContent = data.state_label;
      el.className = `state state-${data.state}`;
    });
    root.querySelectorAll("[data-state-reason]").forEach((el) => { el.textContent = data.state_reason || ""; });
    root.querySelectorAll("[data-show-when]").forEach((el) => {
      el.hidden = !el.dataset.showWhen.split(" ").includes(data.state);
    });
    root.querySelectorAll("[data-finish]").forEach((el) => {
      el.textContent = data.plan.finish ? jst(data.plan.finish, false) : (data.progress.pending ? "—" : "送信完了");
    });
    root.querySelectorAll("[data-miss]").forEach((el) => { el.hidden = !data.will_miss_send_by; });
  }

  function stamp(root) {
    root.querySelectorAll("[data-updated]").forEach((el) => { el.textContent = jst(new Date().toISOString(), true); });
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) throw new Error("signed-out");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
  }

  function signedOut(root) {
    root.querySelectorAll("[data-updated]").forEach((el) => {
      el.textContent = "ログインの有効期限が切れました。再読み込みしてください。";
    });
  }

  function pollCampaign(root) {
    const chartBox = root.querySelector("[data-chart-box]");
    async function tick() {
      let running = false;
      try {
        const data = await getJson(root.dataset.poll);
        apply(root, data);
        running = data.running;
        if (chartBox && root.dataset.chart && (running || data.progress.pending)) {
          const response = await fetch(root.dataset.chart, { credentials: "same-origin" });
          if (response.ok) chartBox.innerHTML = await response.text();
        }
        stamp(root);
      } catch (error) {
        if (error.message === "signed-out") return signedOut(root);
      }
      setTimeout(tick, running ? RUNNING_MS : IDLE_MS);
    }
    tick();
  }

  function pollList(root) {
    async function tick() {
      let running = false;
      try {
        const data = await getJson(root.dataset.pollList);
        for (const campaign of data.campaigns) {
          const row = root.querySelector(`[data-campaign="${CSS.escape(campaign.campaign)}"]`);
          if (!row) continue;
          apply(row, campaign);
          row.classList.toggle("will-miss", campaign.will_miss_send_by);
          running = running || campaign.running;
        }
        stamp(root);
      } catch (error) {
        if (error.message === "signed-out") return signedOut(root);
      }
      setTimeout(tick, running ? RUNNING_MS : IDLE_MS);
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
    document.querySelectorAll("[data-poll]").forEach(pollCampaign);
    document.querySelectorAll("[data-poll-list]").forEach(pollList);
  });
})();
