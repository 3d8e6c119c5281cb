// AdaSDE ComfyUI frontend extension (plain JS, no build step).
//
// * "Distill AdaSDE Coefficients": draws the live loss curve and the per-step coefficients on the node while it trains,
//   from the "adasde.distill.progress" events the node sends (PromptServer.send_sync), and the final result.
// * "FID Evaluate": shows the metric value and image count on the node after it ran.
// * "adasde.warning" events (e.g. the KSampler "adasde" entry fell back to untrained coefficients) become a toast.
//
// The file may be served twice (pyproject [tool.comfy] web + WEB_DIRECTORY under another folder name); the window flag
// keeps the registration single.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const DISTILL = "AdaSDEDistill";
const FID = "AdaSDEFIDEvaluate";
const CHART_H = 190;
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

function scale(values, y0, h) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!(hi > lo)) {
    hi = lo + 1;
    lo -= 1;
  }
  return (v) => y0 + h - ((v - lo) / (hi - lo)) * h;
}

function drawChart(ctx, data, w, top) {
  const pad = 10;
  const boxW = (w - 3 * pad) / 2;
  const boxH = CHART_H - 2 * pad - 14;
  ctx.save();
  ctx.fillStyle = "#151515";
  ctx.fillRect(pad, top + pad, boxW, boxH);
  ctx.fillRect(2 * pad + boxW, top + pad, boxW, boxH);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#ddd";
  const losses = (data.losses || []).filter((v) => Number.isFinite(v) && v > 0).map((v) => Math.log10(v));
  const done = data.done ?? 0;
  const total = data.total ?? 0;
  const last = data.losses && data.losses.length ? data.losses[data.losses.length - 1] : null;
  const head = data.finished ? "done" : `${done}/${total}`;
  ctx.fillText(`loss ${last !== null ? last.toPrecision(4) : "-"} (${head})`, pad, top + CHART_H - 4);
  ctx.fillText("coefficients per step", 2 * pad + boxW, top + CHART_H - 4);
  if (losses.length) {
    const sy = scale(losses, top + pad + 4, boxH - 8);
    const n = Math.max(losses.length - 1, 1);
    polyline(ctx, losses.map((v, i) => [pad + 4 + ((boxW - 8) * i) / n, sy(v)]), LOSS_COLOR, 3);
  }
  const coeffs = data.coeffs || {};
  const series = Object.entries(coeffs).map(([k, rows]) => [k, rows.map((r) => r.reduce((a, b) => a + b, 0) / r.length)]);
  const all = series.flatMap(([, v]) => v);
  if (all.length) {
    const sy = scale(all, top + pad + 4, boxH - 8);
    const x0 = 2 * pad + boxW + 4;
    for (const [k, v] of series) {
      const n = Math.max(v.length - 1, 1);
      polyline(ctx, v.map((y, i) => [x0 + ((boxW - 8) * i) / n, sy(y)]), COEFF_COLORS[k] || "#fff", 2);
    }
  }
  ctx.restore();
}

function onProgress(event) {
  const d = event.detail || {};
  state.events += 1;
  state.last = d;
  const node = nodeById(d.node);
  if (!node) return;
  node.__adasdeDistill = d;
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
          this.size = [Math.max(this.size[0], 460), Math.max(this.size[1], this.computeSize()[1] + 40)];
          return r;
        };
        const executed = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
          executed?.apply(this, arguments);
          const s = message?.adasde_distill?.[0];
          if (s) this.__adasdeDistill = { ...s, finished: true, done: s.losses?.length, total: s.losses?.length };
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
        const draw = nodeType.prototype.onDrawForeground;
        nodeType.prototype.onDrawForeground = function (ctx) {
          draw?.apply(this, arguments);
          const r = this.__adasdeFid;
          if (!r || this.flags?.collapsed) return;
          ctx.save();
          ctx.font = "bold 14px sans-serif";
          ctx.fillStyle = "#9fe09f";
          const v = Number.isFinite(r.value) ? r.value.toFixed(3) : "n/a";
          ctx.fillText(`${r.metric} ${v}  (${r.num_images} images)`, 10, this.size[1] - 8);
          ctx.restore();
        };
      }
    },
  });
}
