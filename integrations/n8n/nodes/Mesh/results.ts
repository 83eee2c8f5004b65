import type { IDataObject } from 'n8n-workflow';

/**
 * What the node outputs, built from the peer's JSON answers (docs/http.md). Pure functions:
 * the node's execute() does the HTTP and hands the bodies here.
 */

export interface RouteOptions {
	localOnly?: boolean;
	noEscalate?: boolean;
	threshold?: number;
	peer?: string;
	session?: string;
}

/** The `mesh` object of a request: routing options, unset ones left out. */
export function meshField(options: RouteOptions): IDataObject | undefined {
	const mesh: IDataObject = {};
	if (options.localOnly) mesh.local_only = true;
	if (options.noEscalate) mesh.no_escalate = true;
	if (typeof options.threshold === 'number' && options.threshold >= 0) mesh.threshold = options.threshold;
	if (options.peer) mesh.peer = options.peer;
	if (options.session) mesh.session = options.session;
	return Object.keys(mesh).length ? mesh : undefined;
}

/** One rung of the escalation ladder, as the node shows it. */
function pathOf(raw: unknown): IDataObject[] {
	if (!Array.isArray(raw)) return [];
	return raw.map((rung: IDataObject) => ({
		peer: rung.peer ?? null,
		model: rung.model ?? null,
		confidence: rung.confidence ?? null,
		reason: rung.reason ?? null,
		cloud: rung.cloud ?? false,
		answered: rung.answered ?? false,
	}));
}

/** A `chat.completion` with its `mesh` field -> the Ask operation's output. */
export function askResult(body: IDataObject): IDataObject {
	const mesh = (body.mesh ?? {}) as IDataObject;
	const choices = (body.choices ?? []) as IDataObject[];
	const message = ((choices[0] ?? {}).message ?? {}) as IDataObject;
	return {
		text: message.content ?? '',
		peer: mesh.peer ?? null,
		peerName: mesh.peer_name ?? null,
		model: mesh.model ?? body.model ?? null,
		confidence: mesh.confidence ?? null,
		escalated: mesh.escalated ?? false,
		stopped: mesh.stopped ?? null,
		path: pathOf(mesh.path),
		finishReason: (choices[0] ?? {}).finish_reason ?? null,
		usage: body.usage ?? null,
		tokensPerS: mesh.tokens_per_s ?? null,
	};
}

/** A job as the peer keeps it -> the job operations' output (result fields once done). */
export function jobResult(job: IDataObject): IDataObject {
	const stats = (job.stats ?? {}) as IDataObject;
	const out: IDataObject = {
		jobId: job.id,
		state: job.state,
		done: job.state === 'done',
		prompt: job.prompt ?? null,
		attempts: job.attempts ?? 0,
		error: job.error ?? null,
		createdAt: job.created_at ?? null,
		updatedAt: job.updated_at ?? null,
	};
	if (job.state === 'done') {
		Object.assign(out, {
			text: job.result_text ?? '',
			peer: stats.peer ?? job.ran_on ?? null,
			model: stats.model ?? null,
			confidence: stats.confidence ?? null,
			escalated: stats.escalated ?? false,
			path: pathOf(stats.path),
		});
	}
	return out;
}

/** `GET /v1/mesh/peers` -> one item per member. */
export function peerResults(body: IDataObject): IDataObject[] {
	const peers = (body.peers ?? []) as IDataObject[];
	return peers.map((p) => ({
		peerId: p.peer_id,
		name: p.name,
		state: p.state,
		self: p.self ?? false,
		model: p.model ?? null,
		models: p.models ?? [],
		tokensPerS: p.tokens_per_s ?? null,
		load: p.load ?? null,
		address: p.address ?? null,
	}));
}
