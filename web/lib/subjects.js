// Where a MUSAR Subject node sits in its chain, read from the graph (no server round trip).
//
// A Subject's index is the number of active MUSAR Subject nodes upstream of it through the
// optional `subjects` input; the first node of a chain has index 0. That is the order in which
// the Python node appends subjects, hence the colour the routing overlay uses for it. Reroute
// nodes are followed; bypassed Subject nodes pass their input through and are not counted.

export const SUBJECT_TYPE = "MUSAR_Subject";
export const APPLY_ROUTING_TYPE = "MUSAR_ApplyRouting";
const BYPASS = 4;
const END = Symbol("end of chain");

const classOf = (node) => node?.comfyClass ?? node?.type;
export const isSubject = (node) => classOf(node) === SUBJECT_TYPE;

function inputSlot(node, name) {
  const inputs = node?.inputs ?? [];
  return typeof name === "number" ? name : inputs.findIndex((i) => i?.name === name);
}

/** The node feeding `node`'s input `name` (through Reroutes); END if unconnected; null if unknown. */
export function originOf(node, name) {
  const seen = new Set();
  let cur = node;
  let slot = inputSlot(node, name);
  for (;;) {
    const input = cur?.inputs?.[slot];
    if (!input) return cur === node ? END : null;
    if (input.link == null) return END;
    const origin = cur.getInputNode?.(slot) ?? null;
    if (!origin || seen.has(origin)) return null; // subgraph boundary, stale link or a cycle
    seen.add(origin);
    if (classOf(origin) !== "Reroute") return origin;
    cur = origin;
    slot = 0;
  }
}

/** Active Subject nodes of the chain ending at `node`, first subject first; null if unknown. */
export function subjectChain(node) {
  const chain = [];
  const seen = new Set();
  let cur = node;
  while (cur !== END) {
    if (!isSubject(cur) || seen.has(cur) || chain.length > 64) return null;
    seen.add(cur);
    if (cur.mode !== BYPASS) chain.push(cur);
    cur = originOf(cur, "subjects");
  }
  return chain.reverse();
}

/** {index, known}: the subject index of a MUSAR_Subject node (index null when not knowable). */
export function subjectIndex(node) {
  if (!isSubject(node) || node.mode === BYPASS) return { index: null, known: false };
  const chain = subjectChain(node);
  return chain ? { index: chain.length - 1, known: true } : { index: null, known: false };
}

/** Caption of a Subject node from its widget ("" when the caption comes from a link). */
export function subjectCaption(node) {
  const w = node?.widgets?.find((x) => x.name === "caption");
  const linked = node?.inputs?.find((i) => i?.name === "caption")?.link != null;
  return !linked && typeof w?.value === "string" ? w.value.trim() : "";
}

/** Captions of the subjects routed into `node` (a RoutingPreview or ApplyRouting); null if unknown. */
export function routedCaptions(node) {
  let apply = node;
  if (classOf(node) !== APPLY_ROUTING_TYPE) {
    apply = originOf(node, "routing");
    if (!apply || apply === END || classOf(apply) !== APPLY_ROUTING_TYPE) return null;
  }
  const last = originOf(apply, "subjects");
  if (!last || last === END) return null;
  const chain = subjectChain(last);
  return chain ? chain.map((n, i) => subjectCaption(n) || `subject ${i + 1}`) : null;
}
