// Preloaded into a Node process under test (NODE_OPTIONS=--require THIS): every TCP
// connection to a host other than loopback, and every DNS lookup of a name other than
// localhost, is refused and written to $MESH_TEST_NET_LOG, so a test can assert that a
// program (n8n) talked to nothing but the machine it runs on. Unix sockets pass.
'use strict';
const dns = require('dns');
const fs = require('fs');
const net = require('net');

const LOG = process.env.MESH_TEST_NET_LOG;

function loopback(host) {
	if (host === undefined || host === null || host === '' || host === 'localhost') return true;
	const h = String(host).replace(/^\[|\]$/g, '').toLowerCase();
	return /^127\./.test(h) || h === '::1' || /^::ffff:127\./.test(h) || h.endsWith('.localhost');
}

function record(what) {
	if (LOG) fs.appendFileSync(LOG, `${process.pid} ${what}\n`);
}

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
	let opts = args[0];
	if (Array.isArray(opts)) opts = opts[0]; // net.connect's normalized arguments
	let host;
	let path;
	if (opts && typeof opts === 'object') {
		host = opts.host;
		path = opts.path;
	} else if (typeof opts === 'number' || (typeof opts === 'string' && /^\d+$/.test(opts))) {
		host = typeof args[1] === 'string' ? args[1] : undefined;
	} else if (typeof opts === 'string') {
		path = opts;
	}
	if (!path && !loopback(host)) {
		record(`connect ${host}:${opts && opts.port}`);
		process.nextTick(() => this.destroy(new Error(`test: connection to ${host} refused (loopback only)`)));
		return this;
	}
	return connect.apply(this, args);
};

function guardLookup(original) {
	return function (hostname, ...rest) {
		if (!loopback(hostname)) {
			record(`lookup ${hostname}`);
			const callback = rest[rest.length - 1];
			const err = Object.assign(new Error(`test: lookup of ${hostname} refused (loopback only)`),
				{ code: 'ENOTFOUND', hostname });
			if (typeof callback === 'function') {
				process.nextTick(() => callback(err));
				return undefined;
			}
			return Promise.reject(err);
		}
		return original.call(this, hostname, ...rest);
	};
}
dns.lookup = guardLookup(dns.lookup);
dns.promises.lookup = guardLookup(dns.promises.lookup);
