// Run by tests/bundle_js.rs: Particle's binary-version-reader makes bundles and asset modules
// from the files in DIR, and reads the bundle and modules hil made there. Writes DIR/theirs.zip,
// DIR/theirs-<name>.plain / .compressed, and prints one JSON object with what it read.
//
//   node interop.js DIR APP_NAME ASSET_NAME...
'use strict';
const path = require('path');
const fs = require('fs');
const crypto = require('crypto');
const bvr = require('binary-version-reader');

const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex');

async function assetDependencies(app) {
	const parser = new bvr.HalModuleParser();
	const info = await parser.parseBuffer({ fileBuffer: app });
	const exts = [].concat(info.prefixInfo.extensions || []).concat(info.suffixInfo.extensions || []);
	return {
		crc_ok: !!(info.crc && info.crc.ok),
		deps: exts
			.filter((e) => e.type === bvr.ModuleInfo.ModuleInfoExtension.ASSET_DEPENDENCY)
			.map((e) => ({ name: e.name, sha256: Buffer.from(e.hash, 'hex').toString('hex') })),
	};
}

async function main() {
	const [dir, appName, ...assetNames] = process.argv.slice(2);
	const appPath = path.join(dir, appName);
	const assetPaths = assetNames.map((n) => path.join(dir, 'assets', n));

	// Theirs, for us to read.
	const zip = await bvr.createApplicationAndAssetBundle(appPath, assetPaths);
	fs.writeFileSync(path.join(dir, 'theirs.zip'), zip);
	for (const n of assetNames) {
		const data = fs.readFileSync(path.join(dir, 'assets', n));
		fs.writeFileSync(path.join(dir, `theirs-${n}.plain`), await bvr.createAssetModule(data, n, { compress: false }));
		fs.writeFileSync(path.join(dir, `theirs-${n}.compressed`), await bvr.createAssetModule(data, n));
	}

	// Ours, read by them.
	const ours = await bvr.unpackApplicationAndAssetBundle(fs.readFileSync(path.join(dir, 'ours.zip')));
	const app = await assetDependencies(ours.application.data);
	const unwrapped = {};
	for (const n of assetNames) {
		const module = fs.readFileSync(path.join(dir, `ours-${n}.compressed`));
		unwrapped[n] = sha256(await bvr.unwrapAssetModule(module));
	}
	console.log(JSON.stringify({
		app_name: ours.application.name,
		app_sha256: sha256(ours.application.data),
		app_crc_ok: app.crc_ok,
		dependencies: app.deps,
		assets: ours.assets.map((a) => ({ name: a.name, sha256: sha256(a.data) })),
		unwrapped,
	}));
}

main().catch((e) => {
	console.error(e && e.stack || String(e));
	process.exit(1);
});
