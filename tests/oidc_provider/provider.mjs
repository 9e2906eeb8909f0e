// A throwaway OpenID Provider for ssot-auth's federation tests: panva's oidc-provider
// (a certified implementation) on a loopback port, with the device flow (RFC 8628)
// and its development-only interactions (any login name is accepted, no password check).
//
//   node provider.mjs [PORT]     PORT 0 (the default) lets the OS choose
//
// Prints one JSON line {"issuer": "http://127.0.0.1:PORT"} on stdout once it listens.
// Clients: "ssot-cli" (public: the device flow needs no secret), "ssot-cli-secret"
// (client_secret_basic, its secret in OP_CLIENT_SECRET) and, when OP_CLIENT_JWK holds
// a public JWK, "ssot-cli-key" (private_key_jwt). Every account is
// NAME@example.com with a verified e-mail and preferred_username NAME.
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
const secret = process.env.OP_CLIENT_SECRET || 'not-a-real-secret-0123456789abcdef';
const deviceGrant = 'urn:ietf:params:oauth:grant-type:device_code';
const clientKey = process.env.OP_CLIENT_JWK ? JSON.parse(process.env.OP_CLIENT_JWK) : null;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'op-test-key', alg: 'RS256', use: 'sig' };

const configuration = {
  clients: [
    {
      client_id: 'ssot-cli',
      token_endpoint_auth_method: 'none',
      grant_types: [deviceGrant],
      response_types: [],
      redirect_uris: [],
    },
    {
      client_id: 'ssot-cli-secret',
      client_secret: secret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [deviceGrant],
      response_types: [],
      redirect_uris: [],
    },
    ...(clientKey ? [{
      client_id: 'ssot-cli-key',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: { keys: [clientKey] },
      grant_types: [deviceGrant],
      response_types: [],
      redirect_uris: [],
    }] : []),
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: ['throwaway-test-cookie-key'] },
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
  },
  // The ID token carries the scope's claims (not only the userinfo endpoint).
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.com`,
          email_verified: true,
          preferred_username: id,
          name: id,
        };
      },
    };
  },
};

const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
