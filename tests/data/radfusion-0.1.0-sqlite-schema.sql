-- The SQLite schema that radfusion 0.1.0 (commit 4fb16f1) made with create_all, from its sqlite_master:
-- tests/unit/radfusion/test_schema.py adopts a database built from it.
CREATE TABLE associations (
	id VARCHAR(36) NOT NULL,
	calling_ae VARCHAR(16) NOT NULL,
	called_ae VARCHAR(16) NOT NULL,
	peer_address VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	started_at DATETIME NOT NULL,
	ended_at DATETIME,
	instances_stored INTEGER NOT NULL,
	instances_failed INTEGER NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_associations_state ON associations (state);
CREATE TABLE studies (
	id INTEGER NOT NULL,
	study_uid VARCHAR(64) NOT NULL,
	accession_number VARCHAR(64) NOT NULL,
	patient_id VARCHAR(64) NOT NULL,
	issuer_of_patient_id VARCHAR(64) NOT NULL,
	study_date VARCHAR(8) NOT NULL,
	state VARCHAR(16) NOT NULL,
	first_received_at DATETIME NOT NULL,
	last_received_at DATETIME NOT NULL,
	stable_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (study_uid)
);
CREATE INDEX ix_studies_state ON studies (state);
CREATE TABLE quarantine (
	id INTEGER NOT NULL,
	association_id VARCHAR(36),
	sop_instance_uid VARCHAR(200),
	reason TEXT NOT NULL,
	path TEXT,
	received_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE audit_events (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	kind VARCHAR(48) NOT NULL,
	subject VARCHAR(128) NOT NULL,
	detail TEXT NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_events_at ON audit_events (at);
CREATE INDEX ix_audit_events_kind ON audit_events (kind);
CREATE TABLE hl7_messages (
	id INTEGER NOT NULL,
	control_id VARCHAR(64) NOT NULL,
	sending_facility VARCHAR(128) NOT NULL,
	message_type VARCHAR(16) NOT NULL,
	received_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (control_id, sending_facility)
);
CREATE TABLE series (
	id INTEGER NOT NULL,
	study_id INTEGER NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	modality VARCHAR(16) NOT NULL,
	attributes JSON NOT NULL,
	state VARCHAR(16) NOT NULL,
	instance_count INTEGER NOT NULL,
	last_received_at DATETIME NOT NULL,
	last_association_id VARCHAR(36),
	geometry_note TEXT,
	revision INTEGER NOT NULL,
	stable_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(study_id) REFERENCES studies (id),
	UNIQUE (series_uid)
);
CREATE INDEX ix_series_study_id ON series (study_id);
CREATE INDEX ix_series_state ON series (state);
CREATE TABLE clinical_values (
	id INTEGER NOT NULL,
	message_id INTEGER NOT NULL,
	patient_id VARCHAR(64) NOT NULL,
	patient_authority VARCHAR(64) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	name VARCHAR(32) NOT NULL,
	code VARCHAR(64) NOT NULL,
	system VARCHAR(128) NOT NULL,
	value FLOAT,
	unit VARCHAR(32) NOT NULL,
	text TEXT NOT NULL,
	flags VARCHAR(16) NOT NULL,
	accession VARCHAR(64) NOT NULL,
	observed_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(message_id) REFERENCES hl7_messages (id)
);
CREATE INDEX ix_clinical_values_message_id ON clinical_values (message_id);
CREATE INDEX ix_clinical_values_patient_id ON clinical_values (patient_id);
CREATE TABLE instances (
	id INTEGER NOT NULL,
	series_id INTEGER NOT NULL,
	sop_instance_uid VARCHAR(64) NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	transfer_syntax_uid VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	instance_number INTEGER,
	position JSON,
	orientation JSON,
	association_id VARCHAR(36),
	received_at DATETIME NOT NULL,
	times_received INTEGER NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(series_id) REFERENCES series (id),
	UNIQUE (sop_instance_uid)
);
CREATE INDEX ix_instances_series_id ON instances (series_id);
CREATE TABLE jobs (
	id INTEGER NOT NULL,
	study_id INTEGER NOT NULL,
	series_id INTEGER NOT NULL,
	detector VARCHAR(64) NOT NULL,
	model_version VARCHAR(32) NOT NULL,
	revision INTEGER NOT NULL,
	rule VARCHAR(128) NOT NULL,
	destinations JSON NOT NULL,
	report_destinations JSON NOT NULL,
	alert_channels JSON NOT NULL,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	started_at DATETIME,
	finished_at DATETIME,
	error TEXT,
	result JSON,
	clinical_context JSON,
	trigger_released_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (series_id, detector, model_version, revision),
	FOREIGN KEY(study_id) REFERENCES studies (id),
	FOREIGN KEY(series_id) REFERENCES series (id)
);
CREATE INDEX ix_jobs_series_id ON jobs (series_id);
CREATE INDEX ix_jobs_study_id ON jobs (study_id);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE TABLE artifacts (
	id INTEGER NOT NULL,
	job_id INTEGER NOT NULL,
	kind VARCHAR(8) NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	sop_instance_uid VARCHAR(64) NOT NULL,
	series_uid VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	predecessor_id INTEGER,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id),
	UNIQUE (sop_instance_uid),
	FOREIGN KEY(predecessor_id) REFERENCES artifacts (id)
);
CREATE INDEX ix_artifacts_job_id ON artifacts (job_id);
CREATE TABLE alerts (
	id INTEGER NOT NULL,
	job_id INTEGER NOT NULL,
	payload JSON NOT NULL,
	created_at DATETIME NOT NULL,
	released_at DATETIME,
	delivered_at DATETIME,
	latency_s FLOAT,
	PRIMARY KEY (id),
	UNIQUE (job_id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE TABLE deliveries (
	id INTEGER NOT NULL,
	kind VARCHAR(16) NOT NULL,
	target VARCHAR(64) NOT NULL,
	job_id INTEGER,
	artifact_id INTEGER,
	alert_id INTEGER,
	payload JSON,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at DATETIME NOT NULL,
	created_at DATETIME NOT NULL,
	delivered_at DATETIME,
	last_error TEXT,
	PRIMARY KEY (id),
	UNIQUE (artifact_id, target),
	UNIQUE (alert_id, target),
	FOREIGN KEY(job_id) REFERENCES jobs (id),
	FOREIGN KEY(artifact_id) REFERENCES artifacts (id),
	FOREIGN KEY(alert_id) REFERENCES alerts (id)
);
CREATE INDEX ix_deliveries_job_id ON deliveries (job_id);
CREATE INDEX ix_deliveries_state ON deliveries (state);
CREATE INDEX ix_deliveries_next_attempt_at ON deliveries (next_attempt_at);
