package deploy

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The types below mirror KEDA's keda.sh/v1alpha1 API as its documentation
// describes it (keda.sh/docs/2.21: reference/scaledobject-spec,
// concepts/authentication, scalers/apache-kafka). They are decoded
// strictly: a field KEDA does not document is an error, as is a trigger
// metadata key the Kafka scaler does not know. To use a newer field, add it
// here from KEDA's docs.

type scaledObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       scaledObjectSpec  `json:"spec"`
}

type scaledObjectSpec struct {
	ScaleTargetRef        scaleTargetRef `json:"scaleTargetRef"`
	PollingInterval       *int32         `json:"pollingInterval,omitempty"`
	CooldownPeriod        *int32         `json:"cooldownPeriod,omitempty"`
	InitialCooldownPeriod *int32         `json:"initialCooldownPeriod,omitempty"`
	IdleReplicaCount      *int32         `json:"idleReplicaCount,omitempty"`
	MinReplicaCount       *int32         `json:"minReplicaCount,omitempty"`
	MaxReplicaCount       *int32         `json:"maxReplicaCount,omitempty"`
	Fallback              *struct {
		FailureThreshold int32  `json:"failureThreshold"`
		Replicas         int32  `json:"replicas"`
		Behavior         string `json:"behavior,omitempty"` // static, currentReplicas, currentReplicasIfHigher, currentReplicasIfLower, scalingModifiers
	} `json:"fallback,omitempty"`
	Advanced *struct {
		RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
		HorizontalPodAutoscalerConfig *struct {
			Name     string                                         `json:"name,omitempty"`
			Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
		} `json:"horizontalPodAutoscalerConfig,omitempty"`
		ScalingModifiers *struct {
			Target           string `json:"target"`
			ActivationTarget string `json:"activationTarget,omitempty"`
			MetricType       string `json:"metricType,omitempty"`
			Formula          string `json:"formula"`
		} `json:"scalingModifiers,omitempty"`
	} `json:"advanced,omitempty"`
	Triggers []scaleTrigger `json:"triggers"`
}

type scaleTargetRef struct {
	APIVersion             string `json:"apiVersion,omitempty"` // default apps/v1
	Kind                   string `json:"kind,omitempty"`       // default Deployment
	Name                   string `json:"name"`
	EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
}

type scaleTrigger struct {
	Type             string `json:"type"`
	Name             string `json:"name,omitempty"`
	UseCachedMetrics bool   `json:"useCachedMetrics,omitempty"`
	// Metadata values are strings in KEDA's CRD: an unquoted true or 5000
	// fails to decode here as it would fail KEDA's validation.
	Metadata          map[string]string `json:"metadata"`
	AuthenticationRef *struct {
		Name string `json:"name"`
		Kind string `json:"kind,omitempty"` // TriggerAuthentication (default) or ClusterTriggerAuthentication
	} `json:"authenticationRef,omitempty"`
	MetricType string `json:"metricType,omitempty"` // AverageValue (default), Value, Utilization
}

type triggerAuthentication struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		PodIdentity     *podIdentity `json:"podIdentity,omitempty"`
		SecretTargetRef []struct {
			Parameter string `json:"parameter"`
			Name      string `json:"name"`
			Key       string `json:"key"`
		} `json:"secretTargetRef,omitempty"`
		Env []struct {
			Parameter     string `json:"parameter"`
			Name          string `json:"name"`
			ContainerName string `json:"containerName,omitempty"`
		} `json:"env,omitempty"`
		BoundServiceAccountToken []struct {
			Parameter          string `json:"parameter"`
			ServiceAccountName string `json:"serviceAccountName"`
		} `json:"boundServiceAccountToken,omitempty"`
		HashiCorpVault *struct {
			Address        string `json:"address"`
			Namespace      string `json:"namespace,omitempty"`
			Authentication string `json:"authentication"`
			Role           string `json:"role,omitempty"`
			Mount          string `json:"mount,omitempty"`
			Credential     *struct {
				Token          string `json:"token,omitempty"`
				ServiceAccount string `json:"serviceAccount,omitempty"`
			} `json:"credential,omitempty"`
			Secrets []struct {
				Parameter string `json:"parameter"`
				Key       string `json:"key"`
				Path      string `json:"path"`
			} `json:"secrets"`
		} `json:"hashiCorpVault,omitempty"`
		AzureKeyVault *struct {
			VaultURI    string       `json:"vaultUri"`
			PodIdentity *podIdentity `json:"podIdentity,omitempty"`
			Credentials *struct {
				ClientID     string         `json:"clientId"`
				ClientSecret secretValueRef `json:"clientSecret"`
				TenantID     string         `json:"tenantId"`
			} `json:"credentials,omitempty"`
			Cloud *struct {
				Type                    string `json:"type"`
				KeyVaultResourceURL     string `json:"keyVaultResourceURL,omitempty"`
				ActiveDirectoryEndpoint string `json:"activeDirectoryEndpoint,omitempty"`
			} `json:"cloud,omitempty"`
			Secrets []struct {
				Parameter string `json:"parameter"`
				Name      string `json:"name"`
				Version   string `json:"version,omitempty"`
			} `json:"secrets"`
		} `json:"azureKeyVault,omitempty"`
		AWSSecretManager *struct {
			PodIdentity *podIdentity `json:"podIdentity,omitempty"`
			Credentials *struct {
				AccessKey       secretValueRef `json:"accessKey"`
				AccessSecretKey secretValueRef `json:"accessSecretKey"`
			} `json:"credentials,omitempty"`
			Region  string `json:"region,omitempty"`
			Secrets []struct {
				Parameter string `json:"parameter"`
				Name      string `json:"name"`
				Version   string `json:"version,omitempty"`
				SecretKey string `json:"secretKey,omitempty"`
			} `json:"secrets"`
		} `json:"awsSecretManager,omitempty"`
		GCPSecretManager *struct {
			Secrets []struct {
				Parameter string `json:"parameter"`
				ID        string `json:"id"`
				Version   string `json:"version,omitempty"`
			} `json:"secrets"`
			PodIdentity *podIdentity `json:"podIdentity,omitempty"`
			Credentials *struct {
				ClientSecret secretValueRef `json:"clientSecret"`
			} `json:"credentials,omitempty"`
		} `json:"gcpSecretManager,omitempty"`
	} `json:"spec"`
}

type podIdentity struct {
	Provider      string `json:"provider,omitempty"` // none, azure-workload, aws, aws-eks, gcp
	IdentityID    string `json:"identityId,omitempty"`
	RoleArn       string `json:"roleArn,omitempty"`
	IdentityOwner string `json:"identityOwner,omitempty"`
}

type secretValueRef struct {
	ValueFrom struct {
		SecretKeyRef struct {
			Name string `json:"name"`
			Key  string `json:"key"`
		} `json:"secretKeyRef"`
	} `json:"valueFrom"`
}

// kafkaTriggerKeys are the metadata keys of KEDA's kafka trigger, each with
// a check of its value (nil: any string).
var kafkaTriggerKeys = map[string]func(string) error{
	"bootstrapServers":                   nonEmpty,
	"consumerGroup":                      nonEmpty,
	"topic":                              nonEmpty,
	"lagThreshold":                       positiveInt,
	"activationLagThreshold":             nonNegativeInt,
	"offsetResetPolicy":                  oneOf("latest", "earliest"),
	"allowIdleConsumers":                 oneOf("true", "false"),
	"scaleToZeroOnInvalidOffset":         oneOf("true", "false"),
	"excludePersistentLag":               oneOf("true", "false"),
	"limitToPartitionsWithLag":           oneOf("true", "false"),
	"ensureEvenDistributionOfPartitions": oneOf("true", "false"),
	"version":                            nonEmpty,
	"fullMetadata":                       oneOf("true", "false"),
	"partitionLimitation":                nonEmpty,
	"sasl":                               oneOf("plaintext", "scram_sha256", "scram_sha512", "gssapi", "oauthbearer", "none"),
	"saslTokenProvider":                  oneOf("bearer", "aws_msk_iam"),
	"tls":                                oneOf("enable", "disable"),
	"unsafeSsl":                          oneOf("true", "false"),
	"awsRegion":                          nonEmpty,
}

// kafkaAuthParameters are the parameters a TriggerAuthentication may give
// KEDA's kafka trigger.
var kafkaAuthParameters = []string{
	"sasl", "saslTokenProvider", "username", "password", "keytab", "realm", "kerberosConfig",
	"kerberosServiceName", "kerberosDisableFAST", "oauthTokenEndpointUri", "scopes", "oauthExtensions",
	"tls", "ca", "cert", "key", "keyPassword", "awsRoleArn", "awsAccessKeyID", "awsSecretAccessKey",
}

func nonEmpty(s string) error {
	if strings.TrimSpace(s) == "" {
		return fmt.Errorf("empty")
	}
	return nil
}

func positiveInt(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("%q is not a positive integer", s)
	}
	return nil
}

func nonNegativeInt(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a non-negative integer", s)
	}
	return nil
}

func oneOf(vs ...string) func(string) error {
	return func(s string) error {
		if !slices.Contains(vs, s) {
			return fmt.Errorf("%q is not one of %s", s, strings.Join(vs, ", "))
		}
		return nil
	}
}

// saslMechanisms maps bqsink's kafka.sasl.mechanism (compared without case)
// to the kafka trigger's sasl and saslTokenProvider values.
var saslMechanisms = map[string][2]string{
	"plain":         {"plaintext", ""},
	"scram-sha-256": {"scram_sha256", ""},
	"scram-sha-512": {"scram_sha512", ""},
	"oauthbearer":   {"oauthbearer", ""},
	"aws-msk-iam":   {"oauthbearer", "aws_msk_iam"},
}

// TestScaledObject checks the ScaledObject against KEDA's documented API and
// against the config: the trigger watches the group and topics bqsink
// consumes, on the brokers it reads, with the same offset reset policy and
// authentication; replicas never exceed the partitions; lagThreshold sits
// above the lag a healthy group carries; a group stuck on a BigQuery outage
// does not scale out.
func TestScaledObject(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		so := d.scaledObject
		if so.APIVersion != "keda.sh/v1alpha1" || so.Kind != "ScaledObject" {
			t.Fatalf("ScaledObject: apiVersion %q kind %q", so.APIVersion, so.Kind)
		}
		ref := so.Spec.ScaleTargetRef
		if ref.Name != d.deployment.Name || (ref.Kind != "" && ref.Kind != "Deployment") || (ref.APIVersion != "" && ref.APIVersion != "apps/v1") {
			t.Errorf("scaleTargetRef %+v: want the Deployment %s", ref, d.deployment.Name)
		}
		if so.Spec.MinReplicaCount == nil || so.Spec.MaxReplicaCount == nil {
			t.Fatal("minReplicaCount and maxReplicaCount must be set")
		}
		minR, maxR := *so.Spec.MinReplicaCount, *so.Spec.MaxReplicaCount
		if minR < 0 || maxR < 1 || minR > maxR {
			t.Errorf("minReplicaCount %d, maxReplicaCount %d", minR, maxR)
		}

		// Partitions: documented per topic, and maxReplicaCount within them.
		partitions := map[string]int{}
		for pair := range strings.SplitSeq(so.Metadata.Annotations["bqsink/topic-partitions"], ",") {
			topic, n, ok := strings.Cut(strings.TrimSpace(pair), "=")
			p, err := strconv.Atoi(n)
			if !ok || err != nil || p < 1 {
				t.Fatalf("annotation bqsink/topic-partitions %q: want topic=partitions,...", so.Metadata.Annotations["bqsink/topic-partitions"])
			}
			partitions[topic] = p
		}
		topics := cfg.strings(t, "kafka.topics")
		total := 0
		for _, topic := range topics {
			n, ok := partitions[topic]
			if !ok {
				t.Errorf("annotation bqsink/topic-partitions does not give the partitions of %s", topic)
			}
			total += n
		}
		if int(maxR) > total {
			t.Errorf("maxReplicaCount %d is above the %d partitions of %v: the extra replicas would own nothing", maxR, total, topics)
		}

		// One kafka trigger per configured topic, each matching the config.
		group := cfg.string(t, "kafka.group_id")
		brokers := cfg.strings(t, "kafka.brokers")
		mechanism := strings.ToLower(cfg.string(t, "kafka.sasl.mechanism"))
		tlsEnabled := cfg.bool(t, "kafka.tls.enabled")
		startOffset := cfg.string(t, "kafka.start_offset")
		// A record waits up to max_wait in its batch, then for the append's
		// answer and the commit that follows it at once: a second at most.
		steady := cfg.duration(t, "batch.max_wait") + time.Second
		peak, err := strconv.ParseFloat(so.Metadata.Annotations["bqsink/peak-records-per-second"], 64)
		if err != nil || peak <= 0 {
			t.Fatalf("annotation bqsink/peak-records-per-second %q: want the expected peak rate", so.Metadata.Annotations["bqsink/peak-records-per-second"])
		}
		var watched []string
		for i, tr := range so.Spec.Triggers {
			name := fmt.Sprintf("triggers[%d]", i)
			if tr.Type != "kafka" {
				t.Errorf("%s: type %q, want kafka", name, tr.Type)
				continue
			}
			for k, v := range tr.Metadata {
				check, ok := kafkaTriggerKeys[k]
				if !ok {
					t.Errorf("%s: metadata key %q is not one of the kafka trigger's", name, k)
					continue
				}
				if err := check(v); err != nil {
					t.Errorf("%s: metadata %s: %v", name, k, err)
				}
			}
			md := tr.Metadata
			if tr.MetricType != "" && tr.MetricType != "AverageValue" {
				t.Errorf("%s: metricType %s: lagThreshold is explained as a per-replica average (AverageValue)", name, tr.MetricType)
			}
			if md["consumerGroup"] != group {
				t.Errorf("%s: consumerGroup %q, config kafka.group_id %q", name, md["consumerGroup"], group)
			}
			if got := strings.Split(md["bootstrapServers"], ","); !slices.Equal(got, brokers) {
				t.Errorf("%s: bootstrapServers %v, config kafka.brokers %v", name, got, brokers)
			}
			if md["topic"] == "" {
				t.Errorf("%s: no topic: KEDA would sum the lag of every topic the group ever committed", name)
			}
			watched = append(watched, md["topic"])
			if md["offsetResetPolicy"] != startOffset {
				t.Errorf("%s: offsetResetPolicy %q, config kafka.start_offset %q: KEDA would count a new group's lag differently from where bqsink starts", name, md["offsetResetPolicy"], startOffset)
			}
			wantSASL, ok := saslMechanisms[mechanism]
			if !ok {
				t.Errorf("config kafka.sasl.mechanism %q: no kafka trigger equivalent known", mechanism)
			}
			if md["sasl"] != wantSASL[0] || md["saslTokenProvider"] != wantSASL[1] {
				t.Errorf("%s: sasl %q saslTokenProvider %q, want %q %q for kafka.sasl.mechanism %q",
					name, md["sasl"], md["saslTokenProvider"], wantSASL[0], wantSASL[1], mechanism)
			}
			if (md["tls"] == "enable") != tlsEnabled {
				t.Errorf("%s: tls %q, config kafka.tls.enabled %v", name, md["tls"], tlsEnabled)
			}
			if md["unsafeSsl"] == "true" {
				t.Errorf("%s: unsafeSsl true", name)
			}
			if md["excludePersistentLag"] != "true" {
				t.Errorf("%s: excludePersistentLag must be \"true\": during a BigQuery outage every partition's lag grows and more replicas would not help", name)
			}
			if md["allowIdleConsumers"] == "true" {
				t.Errorf("%s: allowIdleConsumers true: replicas beyond the partitions would own nothing", name)
			}
			lag, _ := strconv.ParseFloat(md["lagThreshold"], 64)
			if steadyLag := peak * steady.Seconds(); lag < 2*steadyLag {
				t.Errorf("%s: lagThreshold %.0f is below twice the steady lag of a healthy group, %.0f records/s x (batch.max_wait + 1s for the append and the commit = %s) = %.0f: KEDA would scale out replicas that keep up",
					name, lag, peak, steady, steadyLag)
			}
			if minR == 0 && md["activationLagThreshold"] != "0" {
				t.Errorf("%s: with minReplicaCount 0, activationLagThreshold %q leaves that many records unwritten on a quiet topic", name, md["activationLagThreshold"])
			}
			if tr.AuthenticationRef == nil || tr.AuthenticationRef.Name != d.triggerAuth.Metadata.Name ||
				(tr.AuthenticationRef.Kind != "" && tr.AuthenticationRef.Kind != "TriggerAuthentication") {
				t.Errorf("%s: authenticationRef %+v, want the TriggerAuthentication %s", name, tr.AuthenticationRef, d.triggerAuth.Metadata.Name)
			}
		}
		slices.Sort(watched)
		if want := slices.Sorted(slices.Values(topics)); !slices.Equal(watched, want) {
			t.Errorf("the kafka triggers watch %v; config kafka.topics is %v (one trigger per topic; a regular expression cannot be watched)", watched, want)
		}

		// Scaling behaviour: slow, one-at-a-time scale-in; scale-out that waits
		// out a rebalance's lag bump.
		adv := so.Spec.Advanced
		if adv == nil || adv.HorizontalPodAutoscalerConfig == nil || adv.HorizontalPodAutoscalerConfig.Behavior == nil {
			t.Fatal("advanced.horizontalPodAutoscalerConfig.behavior is not set")
		}
		b := adv.HorizontalPodAutoscalerConfig.Behavior
		if b.ScaleDown == nil || b.ScaleDown.StabilizationWindowSeconds == nil || *b.ScaleDown.StabilizationWindowSeconds < 300 {
			t.Errorf("scaleDown.stabilizationWindowSeconds must be at least 300: every scale-in is a rebalance")
		}
		if b.ScaleUp == nil || b.ScaleUp.StabilizationWindowSeconds == nil || *b.ScaleUp.StabilizationWindowSeconds < 30 {
			t.Errorf("scaleUp.stabilizationWindowSeconds must be at least 30: a rebalance's own lag bump must not trigger the next")
		}
	})
}

// TestTriggerAuthentication checks that KEDA authenticates as bqsink does.
// With a user and password (plain, scram-*): the same Secret keys that the
// Deployment puts in the environment the config reads (the user) and mounts
// where kafka.sasl.password_file points (the password). With aws-msk-iam:
// the workload's own AWS identity (IRSA: the role annotated on bqsink's
// service account), and the region of the brokers' host names. And KEDA
// trusts the CA bqsink trusts: the same Secret key the Deployment mounts at
// kafka.tls.ca_file, or, without one, no ca at all (both use their system
// roots).
func TestTriggerAuthentication(t *testing.T) {
	forEachSetup(t, func(t *testing.T, s setup) {
		d, cfg := s.d, s.cfg
		ta := d.triggerAuth
		if ta.APIVersion != "keda.sh/v1alpha1" || ta.Kind != "TriggerAuthentication" {
			t.Fatalf("TriggerAuthentication: apiVersion %q kind %q", ta.APIVersion, ta.Kind)
		}
		params := map[string]secretKey{}
		for _, r := range ta.Spec.SecretTargetRef {
			if !slices.Contains(kafkaAuthParameters, r.Parameter) {
				t.Errorf("secretTargetRef parameter %q is not one of the kafka trigger's", r.Parameter)
			}
			if _, dup := params[r.Parameter]; dup {
				t.Errorf("secretTargetRef parameter %q given twice", r.Parameter)
			}
			k := secretKey{r.Name, r.Key}
			if !d.hasSecretKey(k) {
				t.Errorf("secretTargetRef %s: %s is not in the Secret examples", r.Parameter, k)
			}
			params[r.Parameter] = k
		}
		env := d.secretEnv()
		switch mechanism := strings.ToLower(cfg.string(t, "kafka.sasl.mechanism")); mechanism {
		case "plain", "scram-sha-256", "scram-sha-512":
			user := envRef(cfg.string(t, "kafka.sasl.username"))
			if user == "" {
				t.Error("config kafka.sasl.username should come from the environment (${VAR}), not be written in the ConfigMap")
			} else if params["username"] != env[user] {
				t.Errorf("KEDA's username comes from %s, bqsink's kafka.sasl.username (${%s}) from %s: they must be the same", params["username"], user, env[user])
			}
			file := cfg.string(t, "kafka.sasl.password_file")
			if src, ok := d.mountedSecretFile(file); !ok {
				t.Errorf("config kafka.sasl.password_file %q is not a Secret's key mounted by the Deployment", file)
			} else if params["password"] != src {
				t.Errorf("KEDA's password comes from %s, bqsink's kafka.sasl.password_file (%s) from %s: they must be the same", params["password"], file, src)
			}
			if ta.Spec.PodIdentity != nil {
				t.Errorf("podIdentity %+v with SASL %s: KEDA authenticates with the user and password", ta.Spec.PodIdentity, mechanism)
			}
		case "aws-msk-iam":
			role := d.serviceAccount.Annotations["eks.amazonaws.com/role-arn"]
			if !strings.HasPrefix(role, "arn:aws:iam::") {
				t.Errorf("ServiceAccount %s: annotation eks.amazonaws.com/role-arn %q: IRSA gives bqsink its AWS role from it", d.serviceAccount.Name, role)
			}
			pi := ta.Spec.PodIdentity
			if pi == nil || pi.Provider != "aws" || !(pi.IdentityOwner == "workload" || (pi.IdentityOwner == "" && pi.RoleArn == role)) {
				t.Errorf("podIdentity %+v: want provider aws with identityOwner workload (the role of bqsink's service account, %s)", pi, role)
			}
			for _, p := range []string{"username", "password", "awsAccessKeyID", "awsSecretAccessKey"} {
				if _, ok := params[p]; ok {
					t.Errorf("secretTargetRef %s with aws-msk-iam: KEDA takes the workload's role", p)
				}
			}
			for i, tr := range d.scaledObject.Spec.Triggers {
				for _, b := range cfg.strings(t, "kafka.brokers") {
					if m := mskHost.FindStringSubmatch(b); m == nil || m[1] != tr.Metadata["awsRegion"] {
						t.Errorf("triggers[%d]: awsRegion %q; broker %s is in %v (bqsink takes the region from the host name)", i, tr.Metadata["awsRegion"], b, m)
					}
				}
			}
		default:
			t.Errorf("kafka.sasl.mechanism %q: no check of KEDA's authentication for it", mechanism)
		}
		if ca := cfg.string(t, "kafka.tls.ca_file"); cfg.bool(t, "kafka.tls.enabled") && ca != "" {
			src, ok := d.mountedSecretFile(ca)
			if !ok {
				t.Errorf("config kafka.tls.ca_file %s is not a Secret's key mounted by the Deployment", ca)
			} else if params["ca"] != src {
				t.Errorf("KEDA's ca comes from %s, bqsink's kafka.tls.ca_file from %s", params["ca"], src)
			}
		} else if _, ok := params["ca"]; ok {
			t.Errorf("KEDA's ca comes from %s, but bqsink trusts its system roots (no kafka.tls.ca_file)", params["ca"])
		}
	})
}

// mskHost matches an MSK broker's host name and captures its region.
var mskHost = regexp.MustCompile(`\.kafka\.([a-z0-9-]+)\.amazonaws\.com(:\d+)?$`)

// envRef returns VAR when s is exactly "${VAR}".
func envRef(s string) string {
	if m := envVar.FindStringSubmatch(s); m != nil && m[0] == s {
		return m[1]
	}
	return ""
}
