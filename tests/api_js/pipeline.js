// A release pipeline written against particle-api-js, run by tests/api_js.rs against
// `hil cloud --api`: the requests are the library's own (multipart `file` parts, JSON bodies,
// `null` to unlock, percent-encoded event names, Bearer tokens), so what passes here passes for
// the tools built on it. Usage: node pipeline.js BASE_URL TOKEN DEVICE_ID DIR
'use strict';

const fs = require('fs');
const path = require('path');
const Particle = require('particle-api-js');

const [base, token, deviceId, dir] = process.argv.slice(2);
const product = 1000;
const particle = new Particle({ baseUrl: base, auth: token });
const app = (v) => fs.readFileSync(path.join(dir, `app-v${v}.bin`));

function step(name) {
  console.log(`ok ${name}`);
}

async function refused(promise, status, text) {
  try {
    await promise;
  } catch (e) {
    if (e.statusCode !== status) {
      throw new Error(`expected ${status}, got ${e.statusCode}: ${e.errorDescription}`);
    }
    if (text && !String(e.errorDescription).includes(text)) {
      throw new Error(`expected "${text}" in: ${e.errorDescription}`);
    }
    return;
  }
  throw new Error(`expected a ${status} refusal`);
}

async function until(what, limitMs, check) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function device() {
  return (await particle.getDevice({ deviceId, product })).body;
}

async function main() {
  await refused(particle.listDevices({ auth: 'c'.repeat(40) }), 401, 'access token provided is invalid');
  step('a wrong token is refused');

  await refused(
    particle.uploadProductFirmware({ file: app(4), version: 5, title: 'wrong', product }),
    400,
    'PRODUCT_VERSION is 4'
  );
  const uploaded = await particle.uploadProductFirmware({
    file: app(4), version: 4, title: 'v4', description: 'from api-js', product,
  });
  if (uploaded.statusCode !== 201 || uploaded.body.version !== 4) {
    throw new Error(`upload: ${JSON.stringify(uploaded)}`);
  }
  const list = await particle.listProductFirmware({ product });
  if (!list.body.some((f) => f.version === 4 && f.title === 'v4')) {
    throw new Error(`list: ${JSON.stringify(list.body)}`);
  }
  step('upload checks the version, then lists it');

  const flashEvents = [];
  const stream = await particle.getEventStream({ product, name: 'spark/flash/status' });
  stream.on('event', (e) => flashEvents.push(e));
  const statusEvents = [];
  const deviceStream = await particle.getEventStream({ deviceId, name: 'spark/status' });
  deviceStream.on('event', (e) => statusEvents.push(e));

  await until('the device online', 30000, async () => (await device()).online);
  step('the device is online');

  const locked = await particle.lockDeviceProductFirmware({
    deviceId, desiredFirmwareVersion: 4, flash: true, product,
  });
  if (locked.body.desired_firmware_version !== 4) {
    throw new Error(`lock: ${JSON.stringify(locked.body)}`);
  }
  await until('firmware_version 4', 30000, async () => (await device()).firmware_version === 4);
  await until('spark/flash/status success', 5000, async () =>
    flashEvents.some((e) => e.data.trim() === 'success' && e.coreid === deviceId && e.productID === product));
  step('lock with flash now updates the device, the product stream shows it');

  const unlocked = await particle.unlockDeviceProductFirmware({ deviceId, product });
  if (unlocked.body.desired_firmware_version !== null) {
    throw new Error(`unlock: ${JSON.stringify(unlocked.body)}`);
  }
  const released = await particle.releaseProductFirmware({
    version: 4, product, product_default: true, intelligent: true,
  });
  if (released.body.product_default !== true) {
    throw new Error(`release: ${JSON.stringify(released.body)}`);
  }
  if ((await device()).targeted_firmware_release_version !== 4) {
    throw new Error('the released default is not the target');
  }
  step('unlock, then release as the product default');

  await particle.markAsDevelopmentDevice({ deviceId, product });
  const flashed = await particle.flashDevice({ deviceId, files: { file: app(5) } });
  if (flashed.body.status !== 'Update started') {
    throw new Error(`flash: ${JSON.stringify(flashed.body)}`);
  }
  await until('firmware_version 5', 30000, async () => (await device()).firmware_version === 5);
  const devices = await particle.listDevices({ product });
  const listed = devices.body.devices.find((d) => d.id === deviceId);
  if (!listed || listed.development !== true || listed.firmware_version !== 5) {
    throw new Error(`list devices: ${JSON.stringify(devices.body)}`);
  }
  if (!listed.last_handshake_at || !listed.last_heard) {
    throw new Error(`no session times: ${JSON.stringify(listed)}`);
  }
  if (!statusEvents.some((e) => e.data === 'online')) {
    throw new Error('no spark/status online on the device stream');
  }
  step('a development device is flashed with a binary');

  stream.abort();
  deviceStream.abort();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`failed: ${e.stack || e}`);
    process.exit(1);
  }
);
