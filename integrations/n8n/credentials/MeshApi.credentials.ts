import type {
	IAuthenticateGeneric,
	ICredentialTestRequest,
	ICredentialType,
	INodeProperties,
} from 'n8n-workflow';

/**
 * A mesh peer's HTTP API (docs/http.md): its URL and, unless the peer lets this machine in
 * without one, an API key made on the peer's machine with `mesh keys create NAME`.
 */
export class MeshApi implements ICredentialType {
	name = 'meshApi';

	displayName = 'Mesh API';

	icon = 'file:../nodes/Mesh/mesh.svg' as const;

	documentationUrl = 'https://www.npmjs.com/package/n8n-nodes-mesh#credentials';

	properties: INodeProperties[] = [
		{
			displayName: 'Peer URL',
			name: 'url',
			type: 'string',
			default: 'http://127.0.0.1:7412',
			required: true,
			placeholder: 'http://127.0.0.1:7412',
			description: "The peer's HTTP API (the \"http\" field of peer.json in its data dir)",
		},
		{
			displayName: 'API Key',
			name: 'apiKey',
			type: 'string',
			typeOptions: { password: true },
			default: '',
			description:
				'A key made with `mesh keys create NAME` on the peer\'s machine. May stay empty when n8n runs on the peer\'s machine and the peer lets loopback callers in (its default).',
		},
	];

	// An empty key sends "Bearer " alone, which the peer takes as no key at all.
	authenticate: IAuthenticateGeneric = {
		type: 'generic',
		properties: {
			headers: {
				Authorization: '=Bearer {{$credentials.apiKey}}',
			},
		},
	};

	test: ICredentialTestRequest = {
		request: {
			baseURL: '={{$credentials.url.replace(/\\/+$/, "")}}',
			url: '/v1/models',
		},
	};
}
