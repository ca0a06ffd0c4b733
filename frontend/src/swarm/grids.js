// A project's expert grids taken together, as the portal's coverage counts them (swarm/grids.py): a
// classifier's one grid, or one per block of a language model (`lm.b0`, `lm.b1`, ...), all of the same
// shape. Pure: no DOM.
import { uidCoords } from "./state.js";

// The grids' names and shape from a snapshot's project (`grid_names`; one unnamed grid if none are given).
export function projectGrids(project) {
  const dims = project?.grid?.length ? project.grid : [1];
  const names = project?.grid_names?.length ? project.grid_names : [""];
  return { names, dims, perGrid: dims.reduce((a, b) => a * b, 1) };
}

// Cells of every grid together.
export function gridsTotal(grids) {
  return grids.perGrid * grids.names.length;
}

export function gridLayout(dims) {
  const rows = dims.length > 1 ? dims[0] : 1;
  const cols = dims.length > 1 ? dims.slice(1).reduce((a, b) => a * b, 1) : dims[0] || 1;
  return { rows, cols };
}

// Which grid a uid belongs to and its row-major index there, or null for a uid of no grid.
export function locateCell(uid, grids) {
  const { names, dims } = grids;
  const parts = uid.split(".");
  if (parts.length <= dims.length) return null;
  const grid = names.indexOf(parts.slice(0, parts.length - dims.length).join("."));
  if (grid < 0) return null;
  const coords = uidCoords(uid, dims.length);
  if (!coords || coords.some((c, i) => c >= dims[i])) return null;
  let index = 0;
  for (let i = 0; i < dims.length; i++) index = index * dims[i] + coords[i];
  return { grid, index };
}

// The uid of cell `index` (row-major) of grid number `grid`.
export function cellUid(grids, grid, index) {
  const coords = [];
  for (let i = grids.dims.length - 1; i >= 0; i--) {
    coords.unshift(index % grids.dims[i]);
    index = Math.floor(index / grids.dims[i]);
  }
  return [grids.names[grid], ...coords].join(".");
}

// Replica counts of each grid laid out row-major (missing cells are holes), with each grid's counts.
export function gridMatrices(cells, grids) {
  const matrices = grids.names.map(() => new Int32Array(grids.perGrid));
  for (const [uid, replicas] of Object.entries(cells || {})) {
    const at = locateCell(uid, grids);
    if (at) matrices[at.grid][at.index] = replicas;
  }
  return matrices.map((values) => {
    let covered = 0, max = 1;
    for (const v of values) {
      if (v > 0) covered++;
      max = Math.max(max, v);
    }
    return { values, covered, holes: values.length - covered, max };
  });
}
