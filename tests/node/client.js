#!/usr/bin/env node
// A Gaffer client in Node.js, made from the protos alone: @grpc/proto-loader reads
// protos/gaffer/v1/job_service.proto at run time and @grpc/grpc-js makes the calls.
//
// Usage: node tests/node/client.js HOST:PORT
//
// Submits `sh -c 'echo hello from node; echo oops >&2'`, follows its logs and its events until
// both streams end by themselves, reads the job back, and prints a JSON summary on stdout.
// Well-known types (Timestamp, Duration) come from GAFFER_GOOGLE_PROTOS when it names a
// directory holding google/protobuf/*.proto, else from the copies bundled with protobufjs.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.resolve(__dirname, '..', '..');
const DEADLINE_MS = 30000;

function load() {
  const includeDirs = [path.join(ROOT, 'protos')];
  if (process.env.GAFFER_GOOGLE_PROTOS) {
    includeDirs.push(process.env.GAFFER_GOOGLE_PROTOS);
  }
  const definition = protoLoader.loadSync('gaffer/v1/job_service.proto', {
    includeDirs,
    keepCase: true, // field names as in the .proto: job_id, after_sequence, ...
    longs: String, // int64 (sequence, offsets, sizes) as decimal strings
    enums: String, // enum values by name: JOB_STATE_COMPLETED
    defaults: true,
    oneofs: true, // a virtual field names the member of a oneof that is set
  });
  return grpc.loadPackageDefinition(definition).gaffer.v1;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// Collects a server stream until it ends by itself; onData returns nothing.
function drain(call, onData) {
  return new Promise((resolve, reject) => {
    call.on('data', onData);
    call.on('error', reject);
    call.on('end', resolve);
  });
}

async function main() {
  const address = process.argv[2];
  if (!address) {
    throw new Error('usage: node client.js HOST:PORT');
  }
  const v1 = load();
  const jobs = new v1.JobService(address, grpc.credentials.createInsecure());

  const submitted = await unary(jobs, 'SubmitJob', {
    spec: {
      exec: { argv: ['sh', '-c', 'echo hello from node; echo oops >&2'] },
      labels: { client: 'node' },
    },
    request_id: `node-${process.pid}-${Date.now()}`,
  });
  const jobId = submitted.job.id;

  const events = [];
  const eventsDone = drain(
    jobs.StreamJobEvents({ job_id: jobId, after_sequence: 0 }, { deadline: deadline() }),
    (frame) => {
      if (frame.frame === 'event') {
        const e = frame.event;
        events.push({ sequence: e.sequence, type: e.type, state: e.state, attempt: e.attempt });
      }
    },
  );

  const output = { LOG_STREAM_STDOUT: [], LOG_STREAM_STDERR: [] };
  const sizes = { LOG_STREAM_STDOUT: 0, LOG_STREAM_STDERR: 0 };
  let end = null;
  let gaps = 0;
  const logsDone = drain(
    jobs.StreamLogs({ job_id: jobId, follow: true }, { deadline: deadline() }),
    (frame) => {
      if (frame.frame === 'chunk') {
        const c = frame.chunk;
        if (Number(c.offset) !== sizes[c.stream]) {
          gaps += 1;
        }
        output[c.stream].push(c.data);
        sizes[c.stream] = Number(c.offset) + c.data.length;
      } else if (frame.frame === 'end') {
        end = frame.end;
      }
    },
  );

  await Promise.all([eventsDone, logsDone]);
  const final = (await unary(jobs, 'GetJob', { job_id: jobId })).job;
  jobs.close();

  const summary = {
    job_id: jobId,
    state: final.state,
    exit_code: final.exit_code === undefined ? null : final.exit_code,
    stdout: Buffer.concat(output.LOG_STREAM_STDOUT).toString('utf8'),
    stderr: Buffer.concat(output.LOG_STREAM_STDERR).toString('utf8'),
    offset_gaps: gaps,
    log_end: end && {
      state: end.state,
      exit_code: end.exit_code === undefined ? null : end.exit_code,
      stdout_size: Number(end.stdout_size),
      stderr_size: Number(end.stderr_size),
    },
    events,
    history: final.history.map((s) => s.state),
  };
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().catch((err) => {
  process.stderr.write(`node client failed: ${err.stack || err}\n`);
  process.exit(1);
});
