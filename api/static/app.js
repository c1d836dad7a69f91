// The insight-stream page: the job list, an upload form, and one job's live results.
// Plain browser JavaScript, no build step. Every call goes through fetch so that the API
// key (when API_KEYS is set) travels in the Authorization header, never in a URL.
"use strict";

const $ = (id) => document.getElementById(id);
const SHOWN_RESULTS = 1000; // rows drawn at most; downloads have everything

// -- calls -------------------------------------------------------------------------------

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("insight-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("insight-api-key", keyInput.value);
  route();
});

function withKey(headers = {}) {
  const all = { ...headers };
  if (keyInput.value) all.authorization = `Bearer ${keyInput.value}`;
  return all;
}

async function api(path, options = {}) {
  const reply = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (!reply.ok) {
    let message = `HTTP ${reply.status}`;
    try {
      message = (await reply.json()).error.message;
    } catch (_) {
      // not our JSON error body: keep the status
    }
    const error = new Error(message);
    error.status = reply.status;
    throw error;
  }
  return reply;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

// -- formatting --------------------------------------------------------------------------

function doneOf(job) {
  return job.completed_count + job.failed_count + (job.skipped_count || 0);
}

function percentOf(job) {
  if (!job.total_records) return 0;
  return Math.floor((100 * doneOf(job)) / job.total_records);
}

const money = (usd) => `$${Number(usd).toFixed(4)}`;
const number = (n) => Number(n).toLocaleString("en-US");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function progressCell(job) {
  const td = document.createElement("td");
  const track = document.createElement("div");
  track.className = "progress";
  const bar = document.createElement("div");
  bar.className = `bar ${job.status}`;
  bar.style.width = `${percentOf(job)}%`;
  track.appendChild(bar);
  td.appendChild(track);
  return td;
}

function badge(status) {
  const span = document.createElement("span");
  span.className = `badge ${status}`;
  span.textContent = status;
  return span;
}

// -- routing -----------------------------------------------------------------------------

let stopCurrent = () => {};

function route() {
  stopCurrent();
  showError(null);
  const match = location.hash.match(/^#\/jobs\/([^/]+)$/);
  if (match) showJob(decodeURIComponent(match[1]));
  else showJobs();
}

window.addEventListener("hashchange", route);

// -- the job list ------------------------------------------------------------------------

function showJobs() {
  $("jobs-view").hidden = false;
  $("job-view").hidden = true;
  let stopped = false;
  stopCurrent = () => {
    stopped = true;
  };
  (async () => {
    while (!stopped) {
      try {
        const body = await (await api("/api/v1/batch/jobs")).json();
        if (!stopped) drawJobs(body.jobs);
      } catch (error) {
        if (!stopped) showError(error);
      }
      await sleep(1000);
    }
  })();
}

function drawJobs(jobs) {
  const rows = jobs
    .slice()
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""))
    .map((job) => {
      const tr = document.createElement("tr");
      tr.className = "job-row";
      tr.dataset.jobId = job.job_id;
      tr.addEventListener("click", () => {
        location.hash = `#/jobs/${encodeURIComponent(job.job_id)}`;
      });
      const id = cell("");
      const code = document.createElement("code");
      code.textContent = job.job_id.slice(0, 12);
      id.appendChild(code);
      const status = cell("");
      status.className = "status";
      status.appendChild(badge(job.status));
      tr.append(
        id,
        cell((job.created_at || "").replace("T", " ").slice(0, 19)),
        status,
        cell(job.lane || "live", "lane"),
        progressCell(job),
        cell(`${job.completed_count}/${job.total_records ?? "?"}`, "succeeded"),
        cell(job.failed_count),
        cell(job.skipped_count),
        cell(number(job.total_tokens_used)),
        cell(money(job.estimated_cost)),
      );
      return tr;
    });
  $("jobs").querySelector("tbody").replaceChildren(...rows);
  $("no-jobs").hidden = jobs.length > 0;
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const isCsv = /\.csv$/i.test(file.name);
  // A .json file is the API's own body ({"records": [...], ...}); .jsonl/.ndjson a record a line.
  const isJson = /\.json$/i.test(file.name);
  const query = new URLSearchParams();
  if (isCsv) query.set("text_column", $("text-column").value || "text");
  if ($("lane").value) query.set("lane", $("lane").value);
  // datetime-local is the browser's local time: sent as ISO 8601 in UTC.
  if ($("deadline").value) query.set("deadline", new Date($("deadline").value).toISOString());
  let path = "/api/v1/batch";
  if ([...query].length) path += `?${query}`;
  const button = $("upload");
  button.disabled = true;
  $("upload-status").textContent = `uploading ${file.name}…`;
  try {
    // The File goes as the body: the browser streams it from disk. One Idempotency-Key
    // per submit: a retry after a network failure answers the same job.
    const reply = await submitOnce(path, {
      method: "POST",
      body: file,
      headers: {
        "content-type": isCsv ? "text/csv" : isJson ? "application/json" : "application/x-ndjson",
      },
    });
    const accepted = await reply.json();
    $("upload-status").textContent = `job ${accepted.job_id}: ${accepted.total_records} records`;
    $("upload-form").reset();
    location.hash = `#/jobs/${encodeURIComponent(accepted.job_id)}`;
  } catch (error) {
    $("upload-status").textContent = "";
    if (isCsv && error.message) {
      // The API names its query parameter; here the column is named in the form.
      error.message = error.message.replace(
        "name the text's column with ?text_column=",
        'type the name of the column that holds the text in "CSV text column" above',
      );
    }
    showError(error);
  } finally {
    button.disabled = false;
  }
});

// -- one job -----------------------------------------------------------------------------

function showJob(jobId) {
  $("jobs-view").hidden = true;
  $("job-view").hidden = false;
  $("job-id").textContent = jobId;
  $("results").querySelector("tbody").replaceChildren();
  $("results-note").textContent = "";
  const state = {
    jobId,
    job: null,
    results: new Map(),
    lastEventId: null,
    over: false,
    stopped: false,
    controller: new AbortController(),
    drawPending: false,
  };
  stopCurrent = () => {
    state.stopped = true;
    state.controller.abort();
  };
  $("failures-only").onchange = () => drawResults(state);
  $("cancel").onclick = () => cancelJob(state);
  $("download-jsonl").onclick = () => download(jobId, "ndjson", `${jobId}.jsonl`);
  $("download-csv").onclick = () => download(jobId, "csv", `${jobId}.csv`);
  follow(state);
}

function drawJob(state, job) {
  state.job = job;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `badge ${job.status}`;
  const bar = $("job-bar");
  bar.style.width = `${percentOf(job)}%`;
  bar.className = `bar ${job.status}`;
  $("job-percent").textContent = `${percentOf(job)}%`;
  $("count-completed").textContent = number(job.completed_count);
  $("count-failed").textContent = number(job.failed_count);
  $("count-skipped").textContent = number(job.skipped_count);
  $("count-total").textContent = job.total_records ?? "?";
  $("count-tokens").textContent = number(job.total_tokens_used);
  $("count-cost").textContent = money(job.estimated_cost);
  $("job-lane").textContent = job.lane || "live";
  $("count-saving").textContent = money(Number(job.saving_usd || 0));
  $("job-lane-reason").textContent = [job.lane_reason, providerBatches(job)]
    .filter(Boolean)
    .join(" · ");
  $("cancel").disabled = job.status !== "pending" && job.status !== "running";
  // Once a job has ended, what became of its records, in words (a cancelled job is "done"
  // at 100% though most of it was skipped).
  const ended = !["pending", "running"].includes(job.status) && percentOf(job) >= 100;
  $("job-outcome").textContent = ended
    ? `${job.status}: ${number(job.completed_count)} succeeded, ${number(job.failed_count)} ` +
      `failed, ${number(job.skipped_count)} skipped of ${number(job.total_records)}`
    : "";
}

// A batch-lane job's provider batches in a few words: how many are in progress and ended,
// and how many records went to the live lane to make the deadline.
function providerBatches(job) {
  const batches = job.provider_batches;
  if (!Array.isArray(batches) || batches.length === 0) return "";
  const ended = batches.filter((b) => b.processing_status === "ended").length;
  const words = [`provider batches: ${batches.length - ended} in progress, ${ended} ended`];
  if (job.moved_to_live_lane) words.push(`${number(job.moved_to_live_lane)} records moved to the live lane`);
  return words.join("; ");
}

// The events stream, read with fetch (EventSource cannot send the Authorization header).
// A stream that closes before `end` is opened again with Last-Event-ID.
async function follow(state) {
  while (!state.stopped && !state.over) {
    $("live").textContent = "live";
    try {
      const headers = state.lastEventId !== null ? { "last-event-id": state.lastEventId } : {};
      const reply = await api(`/api/v1/batch/${encodeURIComponent(state.jobId)}/events`, {
        headers,
        signal: state.controller.signal,
      });
      await readEvents(reply.body, (event) => onEvent(state, event));
    } catch (error) {
      if (state.stopped) return;
      if (error.status && error.status < 500) {
        showError(error);
        return;
      }
    }
    if (!state.over && !state.stopped) await sleep(1000);
  }
  $("live").textContent = state.over ? "finished" : "";
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A "\r" at the end may be half of "\r\n": keep it for the next chunk.
    const hold = buffer.endsWith("\r") ? 1 : 0;
    const ready = buffer.slice(0, buffer.length - hold).replace(/\r\n?/g, "\n");
    const blocks = ready.split("\n\n");
    buffer = blocks.pop() + buffer.slice(buffer.length - hold);
    for (const block of blocks) {
      const event = { event: "message", data: [], id: null };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "event") event.event = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
      if (event.data.length) onEvent({ ...event, data: JSON.parse(event.data.join("\n")) });
    }
  }
}

function onEvent(state, event) {
  if (event.event === "progress") {
    drawJob(state, event.data);
  } else if (event.event === "result") {
    state.results.set(event.data.index, event.data);
    if (event.id !== null) state.lastEventId = event.id;
    scheduleDraw(state);
  } else if (event.event === "end") {
    drawJob(state, event.data);
    state.over = true;
    scheduleDraw(state);
  }
}

function scheduleDraw(state) {
  if (state.drawPending) return;
  state.drawPending = true;
  setTimeout(() => {
    state.drawPending = false;
    drawResults(state);
  }, 150);
}

function drawResults(state) {
  const failuresOnly = $("failures-only").checked;
  const wanted = [...state.results.values()]
    .filter((r) => !failuresOnly || !r.success)
    .sort((a, b) => a.index - b.index);
  const rows = wanted.slice(0, SHOWN_RESULTS).map((r) => {
    const tr = document.createElement("tr");
    tr.className = "result-row";
    tr.dataset.index = r.index;
    const outcome = r.success ? ["ok", "ok"] : r.skipped ? ["skipped", "skip"] : ["failed", "fail"];
    const response = r.response || {};
    tr.append(
      cell(r.index),
      cell(outcome[0], outcome[1]),
      cell(response.summary),
      cell(response.sentiment),
      cell((response.topics || []).join(", ")),
      cell(r.error, r.error ? outcome[1] : ""),
      cell(r.tokens_used),
    );
    return tr;
  });
  $("results").querySelector("tbody").replaceChildren(...rows);
  const more = wanted.length - rows.length;
  $("results-note").textContent =
    more > 0 ? `${more} more not shown: download the results for everything.` : "";
}

async function cancelJob(state) {
  const question =
    `Cancel job ${state.jobId.slice(0, 12)}? Records not started yet are skipped ` +
    "(calls in flight finish). This cannot be undone.";
  if (!window.confirm(question)) return;
  $("cancel").disabled = true;
  try {
    const reply = await api(`/api/v1/batch/${encodeURIComponent(state.jobId)}/cancel`, {
      method: "POST",
    });
    drawJob(state, await reply.json());
  } catch (error) {
    showError(error);
  }
}

async function download(jobId, kind, name) {
  try {
    const reply = await api(`/api/v1/batch/${encodeURIComponent(jobId)}/results.${kind}`);
    const url = URL.createObjectURL(await reply.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showError(error);
  }
}

route();

// -- deleting a job, after a confirmation --------------------------------------------------

$("delete").addEventListener("click", async () => {
  const jobId = $("job-id").textContent;
  if (!jobId || !window.confirm(`Delete job ${jobId} and all its results? This cannot be undone.`)) {
    return;
  }
  $("delete").disabled = true;
  try {
    await api(`/api/v1/batch/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    location.hash = "";
  } catch (error) {
    showError(error);
  } finally {
    $("delete").disabled = false;
  }
});

// -- submitting once, whatever the network does ---------------------------------------------

async function submitOnce(path, options, attempts = 4) {
  const key = window.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  const headers = { ...options.headers, "idempotency-key": key };
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await api(path, { ...options, headers });
    } catch (error) {
      // fetch rejects with a TypeError when the network failed; 503: the service is busy.
      const retryable = error instanceof TypeError || error.status === 503;
      if (!retryable || attempt >= attempts) throw error;
      await sleep(1000 * 2 ** (attempt - 1));
    }
  }
}
