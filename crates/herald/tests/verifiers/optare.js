// Optare: HMAC-SHA256 of the raw body, hex, compared in constant time.
const crypto = require('crypto');
const { load, verdict } = require('./common');

const [dir, secret] = process.argv.slice(2);
const { headers, raw } = load(dir);
const signature = headers['x-optare-signature'] || '';
const digest = crypto.createHmac('sha256', secret).update(raw).digest('hex');
const a = Buffer.from(signature);
const b = Buffer.from(digest);
verdict(a.length === b.length && crypto.timingSafeEqual(a, b), 'optare');
