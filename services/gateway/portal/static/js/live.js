// A recovery's progress as it happens. The gateway streams server-sent events; EventSource
// cannot send an Authorization header, so the stream is read with fetch() and a
// ReadableStream. When streaming is not possible (a proxy that buffers, an old browser,
// the gateway refusing), the page asks for the recovery every two seconds instead.

import { authHeaders, get, seg } from './api.js';

export const POLL_MS = 2000;
const FINAL_STATES = new Set(['complete', 'failed']);
const FINAL_EVENTS = new Set(['RecoveryCompleted', 'RecoveryFailed']);

// One parsed server-sent event block ("event: x\ndata: {...}"), or null for a comment.
export function parseBlock(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (name === 'event') event = value;
    else if (name === 'data') data.push(value);
  }
  if (!data.length) return null;
  return { event, data: JSON.parse(data.join('\n')) };
}

// Calls onEvent(type, data) with 'snapshot' (the whole recovery) and the bus events;
// onMode('live' | 'polling') says how updates arrive. Returns a function that stops.
export function watch(id, { onEvent, onMode }) {
  const controller = new AbortController();
  let stopped = false;

  async function stream() {
    const response = await fetch(`/api/v1/recoveries/${seg(id)}/events`, {
      headers: authHeaders({ Accept: 'text/event-stream' }),
      signal: controller.signal, cache: 'no-store', credentials: 'omit',
    });
    const type = response.headers.get('Content-Type') || '';
    if (!response.ok || !response.body || !type.startsWith('text/event-stream')) {
      throw new Error(`no stream (${response.status})`);
    }
    onMode('live');
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let final = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const parsed = parseBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!parsed) continue;
        onEvent(parsed.event, parsed.data);
        if (FINAL_EVENTS.has(parsed.event)
            || (parsed.event === 'snapshot' && FINAL_STATES.has(parsed.data.state))) final = true;
      }
    }
    return final;
  }

  async function poll() {
    onMode('polling');
    while (!stopped) {
      try {
        const recovery = await get(`/recoveries/${seg(id)}`, { signal: controller.signal });
        onEvent('snapshot', recovery);
        if (FINAL_STATES.has(recovery.state)) return;
      } catch (error) {
        if (stopped || error.name === 'AbortError') return;
        // A failed poll is retried at the next tick; the page keeps the last known state.
      }
      await new Promise((resolve) => { setTimeout(resolve, POLL_MS); });
    }
  }

  (async () => {
    // A stream that ends without a final event (the gateway restarted, or the stream's
    // time was up) is opened again; one that cannot be opened gives way to polling.
    while (!stopped) {
      let final;
      try {
        final = await stream();
      } catch (error) {
        if (stopped) return;
        await poll();
        return;
      }
      if (final) return;
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
  };
}
