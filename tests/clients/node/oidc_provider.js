'use strict';
// A real OpenID provider for the tests: oidc-provider (panva/node-oidc-provider, a certified
// implementation), two issuers in one Node process, plain HTTP on loopback. Tests drive it
// through tests/oidc.py. Prints "ready A=<issuer A> B=<issuer B>" once both listen.
//
// Usage: node oidc_provider.js PORT_A PORT_B STATE_DIR
//   OIDC_ACCESS_TOKEN_TTL  access token lifetime in seconds (default 300)
//
// Each issuer (http://127.0.0.1:PORT):
//   /.well-known/openid-configuration, /jwks, /token (client_credentials only), ...
//   Clients (client_secret_basic or client_secret_post):
//     storefront / storefront-secret  roles ["orders-reader"], preferred_username storefront-svc
//     intruder   / intruder-secret    roles ["guest"],         preferred_username intruder-svc
//   Resource indicators (RFC 8707; they must be absolute URIs): urn:gossamer:AUDIENCE or
//   urn:gossamer:AUDIENCE:ALG, ALG one of RS256 (the default), ES256, EdDSA. The access token is a
//   JWT (typ at+jwt) with aud AUDIENCE, signed with ALG. Without a resource parameter the token is
//   for urn:gossamer:orders-api (RS256).
//   Claims: iss, sub (= client id), client_id, azp, aud, iat, exp, jti, scope (when asked for),
//   realm_access.roles, preferred_username (Keycloak's shape).
//   Keys: one RS256, one ES256, one EdDSA (Ed25519) key, generated at start; the private JWKS is
//   written to STATE_DIR/<A|B>.jwks.json (0600) and nowhere else.
// Admin endpoints (not OIDC), on each issuer's port, POST, answer {"kids": [...]} (JWKS order):
//   /_admin/rotate  a new RS256 key with a new kid goes first: new tokens use it; old ones stay
//   /_admin/retire  drops every RS256 key but the newest (the ES256 and EdDSA keys stay)
//   /_admin/down    the JWKS endpoint answers 503 until /_admin/up
//   /_admin/up
//   GET /_admin/keys the same answer, changing nothing.
// A key change builds a new Provider instance with the new key set (oidc-provider reads its
// keys once, at construction); client_credentials JWT access tokens hold no server state.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const [portA, portB, stateDir] = process.argv.slice(2);
if (!portA || !portB || !stateDir) {
  process.stderr.write('usage: node oidc_provider.js PORT_A PORT_B STATE_DIR\n');
  process.exit(2);
}
const TTL = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 300);
const ALGS = new Set(['RS256', 'ES256', 'EdDSA']);
const AUDIENCE = /^[A-Za-z0-9._-]+$/;

// Keycloak-shaped claims per client.
const CLIENTS = {
  storefront: { secret: 'storefront-secret', roles: ['orders-reader'], username: 'storefront-svc' },
  intruder: { secret: 'intruder-secret', roles: ['guest'], username: 'intruder-svc' },
};

let serial = 0;
function newKey(label, alg) {
  serial += 1;
  const kid = `${label}-${alg}-${serial}-${crypto.randomBytes(4).toString('hex')}`;
  let pair;
  if (alg === 'RS256') pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  else if (alg === 'ES256') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  else pair = crypto.generateKeyPairSync('ed25519');
  return { ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

function resourceServer(resourceIndicator) {
  const match = /^urn:gossamer:([^:]+)(?::([^:]+))?$/.exec(resourceIndicator);
  if (!match || !AUDIENCE.test(match[1]) || (match[2] && !ALGS.has(match[2]))) return undefined;
  return {
    audience: match[1],
    scope: 'orders:read orders:write',
    accessTokenTTL: TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: match[2] || 'RS256' } },
  };
}

async function main() {
  const { default: Provider, errors } = await import('oidc-provider');
  fs.mkdirSync(stateDir, { recursive: true });

  function buildProvider(issuer, keys) {
    const provider = new Provider(issuer, {
      clients: Object.entries(CLIENTS).map(([id, c]) => ({
        client_id: id,
        client_secret: c.secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
      clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
      jwks: { keys },
      cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: { enabled: false },
        revocation: { enabled: false },
        resourceIndicators: {
          enabled: true,
          defaultResource: async () => 'urn:gossamer:orders-api',
          useGrantedResource: async () => true,
          getResourceServerInfo: async (ctx, indicator) => {
            const info = resourceServer(indicator);
            if (!info) throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
            return info;
          },
        },
      },
      extraTokenClaims: async (ctx, token) => {
        const c = CLIENTS[token.clientId];
        if (!c) return undefined;
        return {
          azp: token.clientId,
          preferred_username: c.username,
          realm_access: { roles: [...c.roles] },
        };
      },
    });
    // Plain HTTP on loopback, no proxy in front: nothing else to allow here.
    return { provider, callback: provider.callback() };
  }

  function issuerAt(label, port) {
    const issuer = `http://127.0.0.1:${port}`;
    const state = {
      keys: [newKey(label, 'RS256'), newKey(label, 'ES256'), newKey(label, 'EdDSA')],
      jwksDown: false,
      current: null,
    };
    const rebuild = () => {
      const file = path.join(stateDir, `${label}.jwks.json`);
      fs.writeFileSync(file, JSON.stringify({ keys: state.keys }, null, 2), { mode: 0o600 });
      state.current = buildProvider(issuer, state.keys.map((k) => ({ ...k })));
    };
    rebuild();

    const answer = (res, status, body) => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(body));
    };
    const kids = () => ({ kids: state.keys.map((k) => k.kid), jwks_down: state.jwksDown });

    const admin = {
      rotate: () => {
        state.keys.unshift(newKey(label, 'RS256'));
        rebuild();
      },
      retire: () => {
        const newest = state.keys.find((k) => k.alg === 'RS256');
        state.keys = state.keys.filter((k) => k.alg !== 'RS256' || k === newest);
        rebuild();
      },
      down: () => { state.jwksDown = true; },
      up: () => { state.jwksDown = false; },
    };

    const server = http.createServer((req, res) => {
      const { pathname } = new URL(req.url, issuer);
      if (pathname.startsWith('/_admin/')) {
        const action = pathname.slice('/_admin/'.length);
        if (req.method === 'GET' && action === 'keys') return answer(res, 200, kids());
        if (req.method !== 'POST' || !Object.hasOwn(admin, action)) {
          return answer(res, 404, { error: 'unknown admin action' });
        }
        req.resume();
        admin[action]();
        process.stderr.write(`${label}: ${action} -> ${JSON.stringify(kids())}\n`);
        return answer(res, 200, kids());
      }
      if (state.jwksDown && pathname === '/jwks') {
        return answer(res, 503, { error: 'jwks endpoint down (test)' });
      }
      return state.current.callback(req, res);
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(port), '127.0.0.1', () => resolve(issuer));
    });
  }

  const [issuerA, issuerB] = await Promise.all([issuerAt('A', portA), issuerAt('B', portB)]);
  process.stdout.write(`ready A=${issuerA} B=${issuerB}\n`);
}

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
