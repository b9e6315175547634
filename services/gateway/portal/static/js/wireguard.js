// WireGuard keys made in the browser (WebCrypto X25519): only the public key is sent to
// ReClo; the private key goes straight into the .conf the browser saves.

function base64(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

function fromBase64Url(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

// { publicKey, privateKey } as WireGuard writes them (base64 of 32 bytes), or null when
// this browser has no X25519 in WebCrypto.
export async function generateKeyPair() {
  try {
    if (!globalThis.crypto || !crypto.subtle) return null;
    const pair = await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
    const jwk = await crypto.subtle.exportKey('jwk', pair.privateKey);
    const privateKey = fromBase64Url(jwk.d);
    const publicKey = fromBase64Url(jwk.x);
    if (privateKey.length !== 32 || publicKey.length !== 32) return null;
    return { publicKey: base64(publicKey), privateKey: base64(privateKey) };
  } catch {
    return null;
  }
}

export async function browserMakesKeys() {
  return (await generateKeyPair()) !== null;
}

// The service's .conf (which has no PrivateKey) with ours added to [Interface]: the same
// rule as shared/api/instances.py with_private_key.
export function withPrivateKey(conf, privateKey) {
  const lines = conf.split(/\r?\n/);
  if (lines.some((line) => line.trim().toLowerCase().startsWith('privatekey'))) {
    throw new Error('the configuration already has a private key');
  }
  const at = lines.findIndex((line) => line.trim() === '[Interface]');
  if (at < 0) throw new Error('the configuration has no [Interface] section');
  lines.splice(at + 1, 0, `PrivateKey = ${privateKey}`);
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return `${lines.join('\n')}\n`;
}
