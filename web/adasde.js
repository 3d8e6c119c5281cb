// AdaSDE ComfyUI frontend extension (plain JS, no build step).
//
// * "Distill AdaSDE Coefficients": draws the live loss curve and the per-step coefficients on the node while it trains,
//   from the "adasde.distill.progress" events the node sends (PromptServer.send_sync), and the final result.
// * "FID Evaluate": shows the metric value and image count in its own row on the node after it ran.
// * A finished distillation refreshes the node lists (what pressing R does), so the new file is listed at once.
// * "adasde.warning" events (e.g. the KSampler "adasde" entry fell back to untrained coefficients) become a toast.
//
// The file may be served twice (pyproject [tool.comfy] web + WEB_DIRECTORY under another folder name); the window flag
// keeps the registration single.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const DISTILL = "AdaSDEDistill";
const FID = "AdaSDEFIDEvaluate";
const CHART_H = 240;
const FID_ROW_H = 30;
export const LOSS_COLOR = "#ff40a0"; // distinctive: the headless browser test looks for these pixels
const COEFF_COLORS = { r: "#40c0ff", a: "#ffb000", c: "#60e060", gamma: "#ff5050", w: "#c080ff" };

const state = (window.__adasde = window.__adasde || { events: 0, last: null, warnings: [] });

function nodeById(id) {
  if (id === null || id === undefined || !app.graph) return null;
  return app.graph.getNodeById(Number(id)) || app.graph.getNodeById(id) || null;
}

function polyline(ctx, pts, color, width) {
  if (pts.length === 0) return;
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (pts.length === 1) ctx.lineTo(pts[0][0] + 2, pts[0][1]);
  ctx.stroke();
}

function range(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!(hi > lo)) {
    hi = lo + 1;
    lo -= 1;
  }
  return [lo, hi];
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

// One plot box: frame, y-axis values at the top and bottom, x-axis values at both ends, a title under the box.
function box(ctx, x, y, w, h, yLabels, xLabels, title) {
  ctx.fillStyle = "#151515";
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = "#444";
  ctx.lineWidth = 1;
  ctx.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1);
  ctx.fillStyle = "#aaa";
  ctx.font = "10px sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(yLabels[0], x - 3, y + 9);
  ctx.fillText(yLabels[1], x - 3, y + h);
  ctx.textAlign = "left";
  ctx.fillText(xLabels[0], x, y + h + 11);
  ctx.textAlign = "right";
  ctx.fillText(xLabels[1], x + w, y + h + 11);
  ctx.textAlign = "center";
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(title, x + w / 2, y + h + 24);
  ctx.textAlign = "left";
}

export function drawChart(ctx, data, w, top) {
  const left = 44; // room for the y-axis values
  const gap = 52;
  const boxW = Math.max((w - left - gap - 10) / 2, 40);
  const boxY = top + 8;
  const boxH = CHART_H - 62;
  const x1 = left;
  const x2 = left + boxW + gap;
  ctx.save();
  const losses = (data.losses || []).filter((v) => Number.isFinite(v) && v > 0);
  const logs = losses.map((v) => Math.log10(v));
  const done = data.done ?? 0;
  const total = data.total ?? 0;
  const last = losses.length ? losses[losses.length - 1] : null;
  const head = data.finished ? "done" : `${done}/${total}`;
  const [llo, lhi] = logs.length ? range(logs) : [0, 1];
  box(ctx, x1, boxY, boxW, boxH, logs.length ? [fmt(10 ** lhi), fmt(10 ** llo)] : ["", ""],
    ["1", logs.length ? String(logs.length) : ""],
    `loss ${last !== null ? last.toPrecision(4) : "-"} (${head}), log scale; x: iteration`);
  if (logs.length) {
    const n = Math.max(logs.length - 1, 1);
    const sy = (v) => boxY + 4 + (boxH - 8) * (1 - (v - llo) / (lhi - llo));
    polyline(ctx, logs.map((v, i) => [x1 + 4 + ((boxW - 8) * i) / n, sy(v)]), LOSS_COLOR, 3);
  }
  const coeffs = data.coeffs || {};
  const series = Object.entries(coeffs).map(([k, rows]) => [k, rows.map((r) => r.reduce((a, b) => a + b, 0) / r.length)]);
  const all = series.flatMap(([, v]) => v);
  const steps = series.length ? Math.max(...series.map(([, v]) => v.length)) : 0;
  const [clo, chi] = all.length ? range(all) : [0, 1];
  box(ctx, x2, boxY, boxW, boxH, all.length ? [fmt(chi), fmt(clo)] : ["", ""],
    ["0", steps ? String(steps - 1) : ""], "coefficients (mean over K); x: step");
  if (all.length) {
    const sy = (v) => boxY + 4 + (boxH - 8) * (1 - (v - clo) / (chi - clo));
    for (const [k, v] of series) {
      const n = Math.max(v.length - 1, 1);
      polyline(ctx, v.map((y, i) => [x2 + 4 + ((boxW - 8) * i) / n, sy(y)]), COEFF_COLORS[k] || "#fff", 2);
    }
  }
  // legend: one swatch per series, on its own row under the boxes
  ctx.font = "11px sans-serif";
  let lx = x1;
  const ly = top + CHART_H - 10;
  const entries = [["loss", LOSS_COLOR], ...Object.keys(COEFF_COLORS).map((k) => [k, COEFF_COLORS[k]])];
  for (const [name, color] of entries) {
    ctx.fillStyle = color;
    ctx.fillRect(lx, ly - 8, 14, 4);
    ctx.fillStyle = "#ddd";
    ctx.fillText(name, lx + 18, ly - 3);
    lx += 26 + ctx.measureText(name).width;
  }
  ctx.restore();
}

// After a distillation wrote a new coefficient file: refresh the combo lists (what pressing R does).
export async function refreshLists() {
  try {
    const cmd = app.extensionManager?.command;
    if (cmd?.execute) {
      await cmd.execute("Comfy.RefreshNodeDefinitions");
    } else {
      await app.refreshComboInNodes?.();
    }
    state.refreshes = (state.refreshes || 0) + 1;
  } catch (e) {
    console.warn("AdaSDE: could not refresh the node lists", e);
  }
}

function onProgress(event) {
  const d = event.detail || {};
  state.events += 1;
  state.last = d;
  const node = nodeById(d.node);
  if (!node) return;
  node.__adasdeDistill = d;
  if (d.finished && !node.__adasdeRefreshed) {
    node.__adasdeRefreshed = true;
    refreshLists();
  }
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

function toast(message) {
  state.warnings.push(message);
  const toastApi = app.extensionManager?.toast;
  if (toastApi?.add) {
    toastApi.add({ severity: "warn", summary: "AdaSDE", detail: message, life: 8000 });
  } else {
    console.warn(message);
  }
}

if (!window.__adasdeRegistered) {
  window.__adasdeRegistered = true;
  app.registerExtension({
    name: "adasde.ui",
    async setup() {
      api.addEventListener("adasde.distill.progress", onProgress);
      api.addEventListener("adasde.warning", (e) => toast(e.detail?.message || "AdaSDE warning"));
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData.name === DISTILL) {
        const created = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
          const r = created?.apply(this, arguments);
          // a canvas widget reserves its own row in the node layout (DOM widgets such as the multi-line prompt
          // box would otherwise cover a chart drawn over the node body)
          const node = this;
          this.addCustomWidget({
            name: "adasde_chart",
            type: "adasde_chart",
            value: null,
            serialize: false,
            options: { serialize: false },
            serializeValue: () => undefined,
            computeSize: (width) => [width, CHART_H],
            draw(ctx, _node, width, y) {
              drawChart(ctx, node.__adasdeDistill || { losses: [], coeffs: {} }, width, y);
            },
          });
          this.size = [Math.max(this.size[0], 480), Math.max(this.size[1], this.computeSize()[1] + 40)];
          return r;
        };
        const executed = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
          executed?.apply(this, arguments);
          const s = message?.adasde_distill?.[0];
          if (s) this.__adasdeDistill = { ...s, finished: true, done: s.losses?.length, total: s.losses?.length };
          if (s && !this.__adasdeRefreshed) refreshLists();
          this.__adasdeRefreshed = false; // the next run refreshes again
          this.setDirtyCanvas?.(true, true);
        };
      }
      if (nodeData.name === FID) {
        const executed = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
          executed?.apply(this, arguments);
          this.__adasdeFid = message?.adasde_fid?.[0] || null;
          this.setDirtyCanvas?.(true, true);
        };
        const created = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
          const r = created?.apply(this, arguments);
          // the value gets its own widget row (drawn over the node body it was half hidden under 'reset')
          const node = this;
          this.addCustomWidget({
            name: "adasde_fid_value",
            type: "adasde_fid_value",
            value: null,
            serialize: false,
            options: { serialize: false },
            serializeValue: () => undefined,
            computeSize: (width) => [width, FID_ROW_H],
            draw(ctx, _node, width, y) {
              const res = node.__adasdeFid;
              ctx.save();
              ctx.font = "bold 14px sans-serif";
              ctx.fillStyle = res ? "#9fe09f" : "#888";
              const v = res && Number.isFinite(res.value) ? res.value.toFixed(3) : "n/a";
              const text = res ? `${res.metric} ${v}  (${res.num_images} images)` : "FID: run the node";
              ctx.fillText(text, 15, y + FID_ROW_H / 2 + 5, width - 30);
              ctx.restore();
            },
          });
          this.size = [Math.max(this.size[0], 320), Math.max(this.size[1], this.computeSize()[1])];
          return r;
        };
      }
    },
  });
}
