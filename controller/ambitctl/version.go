package ambitctl

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/translate"
	"github.com/ambit-mesh/ambit/pkg/version"
)

func versionFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	short := fs.Bool("short", false, "ambitctl's own version only (no cluster)")
	return func(ctx context.Context, c *cli, args []string) error {
		if len(args) > 0 {
			return usageErrorf("version takes no arguments")
		}
		fmt.Fprintln(c.stdout, version.String("ambitctl"))
		if *short {
			return nil
		}
		if c.kube == nil {
			fmt.Fprintf(c.stderr, "ambitctl version: the cluster's versions are unknown: %v\n", c.connectErr)
			return nil
		}
		// What runs, by the pods' images: during a rollout, more than one.
		for _, part := range []struct {
			name string
			opts []client.ListOption
		}{
			{"controller", []client.ListOption{client.InNamespace(c.systemNamespace), client.MatchingLabels{"app.kubernetes.io/name": ControllerDeployment}}},
			{"ztunnel", []client.ListOption{client.InNamespace(c.systemNamespace), client.MatchingLabels{"app.kubernetes.io/name": "ztunnel"}}},
			{"waypoints", []client.ListOption{client.MatchingLabels{deploy.LabelName: translate.WaypointClassName}, client.HasLabels{deploy.LabelGatewayName}}},
		} {
			var pods corev1.PodList
			if err := c.client.List(ctx, &pods, part.opts...); err != nil {
				fmt.Fprintf(c.stderr, "ambitctl version: %s pods: %v\n", part.name, err)
				continue
			}
			fmt.Fprintf(c.stdout, "%-10s %s\n", part.name+":", imageSummary(pods.Items))
		}
		return nil
	}
}

// imageSummary is "<image> (N pods)[, <image> (M pods)]" over the pods'
// first containers, or "none running".
func imageSummary(pods []corev1.Pod) string {
	count := map[string]int{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil || len(p.Spec.Containers) == 0 {
			continue
		}
		count[p.Spec.Containers[0].Image]++
	}
	if len(count) == 0 {
		return "none running"
	}
	images := make([]string, 0, len(count))
	for img := range count {
		images = append(images, img)
	}
	sort.Strings(images)
	parts := make([]string, len(images))
	for i, img := range images {
		parts[i] = fmt.Sprintf("%s (%d %s)", img, count[img], plural(count[img], "pod", "pods"))
	}
	return strings.Join(parts, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
