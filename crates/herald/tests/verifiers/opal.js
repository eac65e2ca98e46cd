// Opal: the receiver parses the JSON body (as express.json() does) and signs
// 'v0:' + X-Opal-Request-Timestamp + ':' + JSON.stringify(body).
const crypto = require('crypto');
const { load, verdict } = require('./common');

const [dir, secret] = process.argv.slice(2);
const { headers, raw } = load(dir);
const body = JSON.parse(raw);
const timestamp = headers['x-opal-request-timestamp'];
const sigBaseString = 'v0:' + timestamp + ':' + JSON.stringify(body);
const hmac = crypto.createHmac('sha256', secret);
hmac.write(sigBaseString);
verdict(hmac.digest('hex') === headers['x-opal-signature'], 'opal');
