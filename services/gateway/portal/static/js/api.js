// The /api/v1 surface as the portal calls it: the session token from sessionStorage in
// an Authorization header, and every refusal turned into an ApiError with the API's own
// plain words (problem+json `detail`), never a stack trace.

const TOKEN_KEY = 'reclo.token';
const USER_KEY = 'reclo.user';

// sessionStorage: the token lives as long as the tab, is not sent with every request the
// way a cookie is (so no cross-site request can use it), and leaves with the tab.
export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  get user() {
    try { return JSON.parse(sessionStorage.getItem(USER_KEY) || 'null'); } catch { return null; }
  },
  save(token, user) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, JSON.stringify(user));
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(messageOf(status, problem));
    this.status = status;
    this.problem = problem || {};
    this.errors = Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

function messageOf(status, problem) {
  if (problem && typeof problem.detail === 'string' && problem.detail) return problem.detail;
  if (problem && typeof problem.title === 'string' && problem.title) return problem.title;
  if (status === 0) return 'The ReClo server cannot be reached. Check your connection and try again.';
  return `The server answered ${status}.`;
}

// Called when the session is gone (logged out elsewhere, expired): set by the router.
let onSignedOut = () => {};
export function whenSignedOut(fn) { onSignedOut = fn; }

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  return headers;
}

export async function request(method, path, { body, signal, accept } = {}) {
  const headers = authHeaders({ Accept: accept || 'application/json' });
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store', credentials: 'omit',
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, null);
  }
  return response;
}

export async function api(method, path, options = {}) {
  const response = await request(method, path, options);
  if (response.status === 401 && session.token && !path.startsWith('/auth/login')) {
    session.clear();
    onSignedOut();
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('json') ? response.json() : response.text();
}

export async function problemOf(response) {
  try {
    const type = response.headers.get('Content-Type') || '';
    return type.includes('json') ? await response.json() : null;
  } catch {
    return null;
  }
}

export const get = (path, options) => api('GET', path, options);
export const post = (path, body, options = {}) => api('POST', path, { ...options, body });
export const del = (path, options) => api('DELETE', path, options);

// Every item of a paginated list, up to `max` (a dashboard, not an export).
export async function all(path, max = 1000) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await get(`${path}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

// A segment of a path from data (an id): never able to change the path's shape.
export const seg = (value) => encodeURIComponent(String(value));
