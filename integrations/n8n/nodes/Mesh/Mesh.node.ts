import type {
	IDataObject,
	IExecuteFunctions,
	IHttpRequestMethods,
	INodeExecutionData,
	INodeProperties,
	INodeType,
	INodeTypeDescription,
	JsonObject,
} from 'n8n-workflow';
import { NodeApiError, NodeConnectionTypes, NodeOperationError } from 'n8n-workflow';

import { askResult, jobResult, meshField, peerResults, type RouteOptions } from './results';

/**
 * Mesh: ask a peer-to-peer LLM mesh, submit durable jobs, read their results, list its peers,
 * over one peer's HTTP API (docs/http.md):
 *
 * - Ask: POST /v1/chat/completions with the `mesh` routing object; output: text, peer, model,
 *   confidence, path (every rung of the escalation ladder).
 * - Submit job: POST /v1/mesh/jobs; Get job result: GET /v1/mesh/jobs/{id}?wait=S.
 * - List peers: GET /v1/mesh/peers, one item per member.
 *
 * Only n8n-workflow interfaces that n8n 1.x and 2.x share are used.
 */

const ASK_OR_SUBMIT = { operation: ['ask', 'submitJob'] };

const promptFields: INodeProperties[] = [
	{
		displayName: 'Prompt',
		name: 'prompt',
		type: 'string',
		typeOptions: { rows: 4 },
		default: '',
		required: true,
		displayOptions: { show: ASK_OR_SUBMIT },
		description: 'What to ask the mesh',
	},
	{
		displayName: 'Model',
		name: 'model',
		type: 'string',
		default: '',
		placeholder: 'mesh',
		displayOptions: { show: ASK_OR_SUBMIT },
		description:
			'A model the mesh serves (GET /v1/models) to pin the first answer to it; empty (or "mesh") lets the mesh route',
	},
	{
		displayName: 'Options',
		name: 'options',
		type: 'collection',
		placeholder: 'Add Option',
		default: {},
		displayOptions: { show: ASK_OR_SUBMIT },
		options: [
			{
				displayName: 'Idempotency Key',
				name: 'idempotencyKey',
				type: 'string',
				default: '',
				displayOptions: { show: { '/operation': ['submitJob'] } },
				description: 'Submitting again with the same key returns the same job instead of a new one',
			},
			{
				displayName: 'Local Only',
				name: 'localOnly',
				type: 'boolean',
				default: false,
				description: 'Whether to never leave the mesh: no cloud, even to escalate',
			},
			{
				displayName: 'Max Tokens',
				name: 'maxTokens',
				type: 'number',
				typeOptions: { minValue: 1, maxValue: 8192 },
				default: 256,
				description: 'The longest answer, in tokens',
			},
			{
				displayName: 'No Escalate',
				name: 'noEscalate',
				type: 'boolean',
				default: false,
				description: 'Whether to keep the first answer as it is, however unsure',
			},
			{
				displayName: 'Peer',
				name: 'peer',
				type: 'string',
				default: '',
				description: 'Pin the peer that answers: a member name or a peer ID prefix',
			},
			{
				displayName: 'Session',
				name: 'session',
				type: 'string',
				default: '',
				description: 'Keep a conversation on one peer (its prompt cache is reused)',
			},
			{
				displayName: 'System Message',
				name: 'systemMessage',
				type: 'string',
				typeOptions: { rows: 2 },
				default: '',
			},
			{
				displayName: 'Temperature',
				name: 'temperature',
				type: 'number',
				typeOptions: { minValue: 0, maxValue: 2, numberPrecision: 2 },
				default: 0.7,
			},
			{
				displayName: 'Threshold',
				name: 'threshold',
				type: 'number',
				typeOptions: { minValue: 0, maxValue: 1, numberPrecision: 2 },
				default: 0.7,
				description: "Confidence below which the answer escalates to a stronger model (the peer's own when not set)",
			},
			{
				displayName: 'Timeout (Seconds)',
				name: 'timeoutS',
				type: 'number',
				typeOptions: { minValue: 1 },
				default: 300,
				displayOptions: { show: { '/operation': ['ask'] } },
				description: 'How long to wait for the answer',
			},
		],
	},
];

const jobFields: INodeProperties[] = [
	{
		displayName: 'Job ID',
		name: 'jobId',
		type: 'string',
		default: '',
		required: true,
		displayOptions: { show: { operation: ['getJob'] } },
		description: 'The ID Submit Job returned (its jobId field)',
	},
	{
		displayName: 'Wait',
		name: 'wait',
		type: 'boolean',
		default: true,
		displayOptions: { show: { operation: ['getJob'] } },
		description: 'Whether to wait until the job has ended (or Wait Seconds are up) rather than answer at once',
	},
	{
		displayName: 'Wait Seconds',
		name: 'waitSeconds',
		type: 'number',
		typeOptions: { minValue: 1, maxValue: 300 },
		default: 60,
		displayOptions: { show: { operation: ['getJob'], wait: [true] } },
		description: 'The longest wait; the job is returned as it is then (state queued or running)',
	},
];

export class Mesh implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Mesh',
		name: 'mesh',
		icon: { light: 'file:mesh.svg', dark: 'file:mesh.dark.svg' },
		group: ['transform'],
		version: 1,
		subtitle: '={{$parameter["operation"]}}',
		description: 'Ask a peer-to-peer LLM mesh, run durable jobs on it, list its peers',
		defaults: { name: 'Mesh' },
		inputs: [NodeConnectionTypes.Main],
		outputs: [NodeConnectionTypes.Main],
		usableAsTool: true,
		credentials: [{ name: 'meshApi', required: true }],
		properties: [
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				default: 'ask',
				options: [
					{
						name: 'Ask',
						value: 'ask',
						action: 'Ask the mesh',
						description: 'Get an answer from the best peer for the prompt, escalating when unsure',
					},
					{
						name: 'Get Job Result',
						value: 'getJob',
						action: 'Get a job result',
						description: "A job's state, and its answer once done",
					},
					{
						name: 'List Peers',
						value: 'listPeers',
						action: 'List the peers',
						description: 'The members of the mesh as the peer sees them',
					},
					{
						name: 'Submit Job',
						value: 'submitJob',
						action: 'Submit a job',
						description: 'Queue a durable job that runs even if the peer restarts',
					},
				],
			},
			...promptFields,
			...jobFields,
		],
	};

	async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
		const items = this.getInputData();
		const out: INodeExecutionData[] = [];
		const credentials = await this.getCredentials('meshApi');
		const base = String(credentials.url ?? '').replace(/\/+$/, '');
		if (!/^https?:\/\//.test(base)) {
			throw new NodeOperationError(this.getNode(), `The peer URL must start with http:// or https://, got "${base}"`);
		}

		const call = async (
			method: IHttpRequestMethods,
			path: string,
			itemIndex: number,
			body?: IDataObject,
			timeoutS = 60,
		): Promise<IDataObject> => {
			let response;
			try {
				response = await this.helpers.httpRequestWithAuthentication.call(this, 'meshApi', {
					method,
					url: base + path,
					body,
					json: true,
					timeout: timeoutS * 1000,
					returnFullResponse: true,
					ignoreHttpStatusErrors: true,
				});
			} catch (error) {
				throw new NodeApiError(this.getNode(), error as JsonObject, {
					message: `Cannot reach the mesh peer at ${base}: ${(error as Error).message}`,
					itemIndex,
				});
			}
			const status = Number(response.statusCode);
			const data = (response.body ?? {}) as IDataObject;
			if (status >= 400) {
				const error = (data.error ?? {}) as IDataObject;
				throw new NodeApiError(this.getNode(), data as JsonObject, {
					message: `Mesh peer answered ${status}: ${error.message ?? response.statusMessage ?? 'error'}`,
					description: error.code ? `code: ${error.code}` : undefined,
					httpCode: String(status),
					itemIndex,
				});
			}
			return data;
		};

		// One input item -> its output items. Errors are NodeApiError (the peer's answer) or
		// NodeOperationError (bad parameters), each with the item's index.
		const runItem = async (i: number): Promise<IDataObject[]> => {
			const operation = this.getNodeParameter('operation', i) as string;
			if (operation === 'listPeers') {
				return peerResults(await call('GET', '/v1/mesh/peers', i));
			}
			if (operation === 'getJob') {
				const jobId = (this.getNodeParameter('jobId', i) as string).trim();
				if (!jobId) throw new NodeOperationError(this.getNode(), 'Job ID is empty', { itemIndex: i });
				const wait = this.getNodeParameter('wait', i, true) as boolean;
				const waitS = wait ? (this.getNodeParameter('waitSeconds', i, 60) as number) : 0;
				const body = await call('GET', `/v1/mesh/jobs/${encodeURIComponent(jobId)}?wait=${waitS}`, i, undefined,
					waitS + 30);
				return [jobResult(body.job as IDataObject)];
			}
			const prompt = this.getNodeParameter('prompt', i) as string;
			const model = (this.getNodeParameter('model', i, '') as string).trim();
			const options = this.getNodeParameter('options', i, {}) as IDataObject;
			const messages: IDataObject[] = [];
			if (options.systemMessage) messages.push({ role: 'system', content: options.systemMessage });
			messages.push({ role: 'user', content: prompt });
			const request: IDataObject = { model: model || 'mesh', messages };
			if (options.maxTokens !== undefined) request.max_tokens = options.maxTokens;
			if (options.temperature !== undefined) request.temperature = options.temperature;
			const mesh = meshField(options as RouteOptions);
			if (mesh) request.mesh = mesh;
			if (operation === 'ask') {
				return [askResult(await call('POST', '/v1/chat/completions', i, request, Number(options.timeoutS ?? 300)))];
			}
			if (operation === 'submitJob') {
				if (options.idempotencyKey) request.idempotency_key = options.idempotencyKey;
				const body = await call('POST', '/v1/mesh/jobs', i, request);
				return [jobResult(body.job as IDataObject)];
			}
			throw new NodeOperationError(this.getNode(), `Unknown operation "${operation}"`, { itemIndex: i });
		};

		const continueOnFail = this.continueOnFail();
		for (let i = 0; i < items.length; i++) {
			let results: IDataObject[];
			if (!continueOnFail) {
				results = await runItem(i);
			} else {
				try {
					results = await runItem(i);
				} catch (error) {
					results = [{ error: (error as Error).message }];
				}
			}
			for (const json of results) out.push({ json, pairedItem: { item: i } });
		}
		return [out];
	}
}
