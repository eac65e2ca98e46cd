// WebSub / Asgardeo: x-hub-signature is 'sha256=' + hex HMAC-SHA256 of the raw body.
const crypto = require('crypto');
const { load, verdict } = require('./common');

const [dir, secret] = process.argv.slice(2);
const { headers, raw } = load(dir);
const expected = 'sha256=' + crypto.createHmac('sha256', secret).update(raw).digest('hex');
const got = Buffer.from(headers['x-hub-signature'] || '');
const want = Buffer.from(expected);
verdict(got.length === want.length && crypto.timingSafeEqual(got, want), 'hub');
