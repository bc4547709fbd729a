// The NormWatch tab's data: JSON from the plugin's routes (relative to /data/plugin/normwatch/).

/** Numbers arrive as numbers, or as the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers). */
export function num(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'number') return v;
  return v === 'NaN' ? NaN : v === 'Infinity' ? Infinity : v === '-Infinity' ? -Infinity : Number(v);
}

export function fmt(v) {
  const x = num(v);
  if (x === null) return '–';
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 1e4 || a < 1e-3 ? x.toExponential(2) : x.toPrecision(3).replace(/\.?0+$/, '');
}

const cache = new Map();

/** GET a route; resolves to its JSON, or to {error} with the server's message (never throws). */
export async function get(route, params = {}) {
  const url = `./${route}?${new URLSearchParams(params)}`;
  if (cache.has(url)) return cache.get(url);
  const promise = fetch(url)
    .then(async (r) => {
      const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
      return r.ok ? body : {error: body.error || `HTTP ${r.status}`};
    })
    .catch((e) => ({error: String(e)}));
  cache.set(url, promise);
  return promise;
}
